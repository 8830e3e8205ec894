"""The cost-matched controls: AutoFLIP's pipeline with random or magnitude scores."""
import pyarrow.parquet as pq
import pytest
import torch

from raysim.experiment import execute, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

MLP = {"name": "mlp", "hidden": 32}
PRUNING = {"sparsity": 0.5, "structured_fraction": 0.25, "ramp_rounds": 2, "allocation": "layer",
           "explore_epochs": 1, "explore_fraction": 0.5}


def _run(small_config, name, rounds=3):
    cfg = small_config(rounds=rounds, model=MLP, algorithm={"name": name, "pruning": PRUNING})
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    return load_checkpoint(latest_checkpoint(run_dir)), pq.read_table(run_dir / "rounds.parquet").to_pylist()


def _masks(state):
    return {k.removeprefix("mask/"): v for k, v in state.buffers.items() if k.startswith("mask/")}


@pytest.mark.parametrize("control", ["hybrid_random", "hybrid_magnitude"])
def test_controls_train_autoflips_shapes_at_its_per_tensor_densities_on_its_schedule(small_config, control):
    autoflip, autoflip_rows = _run(small_config, "autoflip")
    state, rows = _run(small_config, control)
    assert {k: v.shape for k, v in state.weights.items()} == {k: v.shape for k, v in autoflip.weights.items()}
    assert state.weights["features.1.weight"].shape == (24, 60)  # a quarter of the 32 units removed
    ours, theirs = _masks(state), _masks(autoflip)
    assert ours.keys() == theirs.keys() and ours
    assert {k: int(m.sum()) for k, m in ours.items()} == {k: int(m.sum()) for k, m in theirs.items()}
    train = [r for r in rows if r["phase"] == "train"]
    autoflip_train = [r for r in autoflip_rows if r["phase"] == "train"]
    assert [r["sparsity"] for r in train] == [r["sparsity"] for r in autoflip_train]
    assert [r["param_density"] for r in train] == [r["param_density"] for r in autoflip_train]
    assert [r["flops_executed"] for r in train] == pytest.approx([r["flops_executed"] for r in autoflip_train])
    assert [r["sparsity"] for r in train] == pytest.approx([0.25, 0.5, 0.5], abs=1e-2)  # the ramp
    assert not any(r["phase"] == "explore" for r in rows)  # the controls need no exploration and pay for none
    # Only the choice differs: other units and other weights.
    assert state.meta["arch"] != autoflip.meta["arch"]
    assert any(not torch.equal(ours[k], theirs[k]) for k in ours)


def test_hybrid_magnitude_removes_the_weakest_units_and_keeps_the_largest_weights(small_config):
    from raysim.data.loading import load_federated_dataset
    from raysim.experiment import model_factory

    cfg = small_config(rounds=1, model=MLP, algorithm={"name": "hybrid_magnitude", "pruning": PRUNING})
    ds = load_federated_dataset(cfg.data, cfg.seed)
    init = model_factory(cfg, ds.input_shape, ds.num_classes, torch.from_numpy(ds.train.x[:1]))(None).state_dict()
    removed = [e for e in _run(small_config, "hybrid_magnitude", rounds=1)[0].meta["arch"]
               if e["layer"] == "features.1"][0]["remove"]
    norms = init["features.1.weight"].norm(dim=1)
    assert sorted(removed) == sorted(torch.argsort(norms)[:8].tolist())

    state, _ = _run(small_config, "hybrid_magnitude", rounds=2)
    for name, mask in _masks(state).items():
        w = state.weights[name].abs()
        assert bool((~mask).any()) and w[mask].min() >= w[~mask].max()  # the pruned are the smallest |w|


def test_hybrid_random_masks_are_nested_as_the_sparsity_ramps(small_config):
    one, _ = _run(small_config, "hybrid_random", rounds=1)
    two, _ = _run(small_config, "hybrid_random", rounds=2)
    for name, kept_later in _masks(two).items():
        kept_earlier = _masks(one)[name]
        assert int(kept_later.sum()) < int(kept_earlier.sum())
        assert not bool((kept_later & ~kept_earlier).any())
