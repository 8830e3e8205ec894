"""AutoFLIP and the baselines running in the engine."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from autoflip.pruned import state_masks
from conftest import algorithm_parts, explored, write_leaf
from raysim.algorithms import ALGORITHMS
from raysim.costs.payload import encode_masked
from raysim.engine.api import ClientData
from raysim.engine.loop import Evaluator
from raysim.experiment import execute, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

MLP = {"name": "mlp", "hidden": 32}


def autoflip(name="autoflip", **pruning):
    return {"name": name, "pruning": {"explore_epochs": 2, **pruning}}


def test_exploration_prunes_structurally_and_masks_hold_through_training(small_config):
    cfg = small_config(model=MLP, clients={"optimizer": {"name": "adam", "lr": 0.01}},
                       algorithm=autoflip(sparsity=0.6, structured_fraction=0.25, ramp_rounds=0))
    ds, factory, algo, runner, state = explored(cfg)
    assert state.meta["arch"]  # a replayable record of the removed units
    dense = factory(None)
    pruned = factory(state.meta["arch"])
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())
    masks = state_masks(state)
    assert masks and all(not bool(state.weights[k][~m].any()) for k, m in masks.items())

    plan = algo.configure_round(state, 0, [0, 1, 2])
    model = runner.model_for(plan.broadcast)
    rows = ds.client_train_rows(0)
    algo.client_update(model, ClientData(torch.from_numpy(ds.train.x[rows]), torch.from_numpy(ds.train.y[rows])),
                       plan.tasks[0], plan.broadcast)
    trained = model.state_dict()
    assert all(torch.count_nonzero(trained[k][~m]) == 0 for k, m in masks.items())  # Adam would move them otherwise
    assert any(not torch.equal(trained[k], state.weights[k]) for k in masks)


def test_pruned_clients_run_fewer_flops_and_bytes_match_the_encoding(small_config):
    cfg = small_config(model=MLP, algorithm=autoflip(sparsity=0.5, structured_fraction=0.5, ramp_rounds=0))
    ds, factory, algo, runner, state = explored(cfg)
    plan = algo.configure_round(state, 0, [0, 1])
    pruned = runner.run(plan.tasks, plan.broadcast).train

    fed_cfg = small_config(model=MLP)
    _, f_factory, fedavg, f_runner = algorithm_parts(fed_cfg)
    f_plan = fedavg.configure_round(fedavg.init_state(f_factory(None).state_dict()), 0, [0, 1])
    dense = f_runner.run(f_plan.tasks, f_plan.broadcast).train
    assert pruned.examples == dense.examples
    assert pruned.flops_executed < 0.8 * dense.flops_executed
    assert pruned.flops_effective < pruned.flops_executed
    assert pruned.bytes_down < dense.bytes_down
    b = plan.broadcast
    expected = len(encode_masked(b.weights, b.masks, include_mask=True)) + len(json.dumps(b.arch).encode())
    assert b.payload_bytes == expected


def test_adaptive_mask_follows_the_sparsity_ramp(small_config):
    cfg = small_config(model=MLP, rounds=3, algorithm=autoflip(sparsity=0.6, ramp_rounds=2))
    run_dir = new_run(cfg)
    summary = execute(cfg, run_dir)
    rows = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    assert [r["phase"] for r in rows] == ["explore", "train", "train", "train"]
    assert summary["rounds"] == 3
    assert summary["totals"]["flops_executed"] == sum(r["flops_executed"] for r in rows)
    assert [r["sparsity"] for r in rows] == pytest.approx([0.0, 0.3, 0.6, 0.6], abs=1e-3)  # floor(s * n) / n
    assert rows[2]["mask_churn"] < 1.0 and rows[3]["mask_churn"] == 1.0
    assert rows[0]["clients_done"] == 12 and rows[0]["flops_executed"] > 0  # exploration is billed


def test_static_mask_starts_at_the_target_and_never_changes(small_config):
    cfg = small_config(model=MLP, rounds=2, algorithm=autoflip("autoflip_static", sparsity=0.6, ramp_rounds=3))
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    rows = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    assert [r["sparsity"] for r in rows] == pytest.approx([0.6] * 3, abs=1e-3)
    assert [r["mask_churn"] for r in rows[1:]] == [1.0, 1.0]


def test_resume_mid_run_equals_uninterrupted_for_autoflip(small_config, monkeypatch):
    cfg = small_config(model=MLP, rounds=3, algorithm=autoflip())
    full_dir = new_run(cfg)
    execute(cfg, full_dir)
    full = load_checkpoint(latest_checkpoint(full_dir))

    original = Evaluator.__call__

    def crash(self, state):
        if state.round == 2:
            raise KeyboardInterrupt
        return original(self, state)

    crashed = new_run(cfg)
    monkeypatch.setattr(Evaluator, "__call__", crash)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, crashed)
    monkeypatch.setattr(Evaluator, "__call__", original)
    execute(cfg, crashed, resume=True)
    resumed = load_checkpoint(latest_checkpoint(crashed))
    assert resumed.meta == full.meta
    assert resumed.buffers.keys() == full.buffers.keys()
    assert all(torch.equal(full.weights[k], resumed.weights[k]) for k in full.weights)
    assert all(torch.equal(full.buffers[k], resumed.buffers[k]) for k in full.buffers)


def test_lstm_path_runs_autoflip(small_config, tmp_path):
    rng = np.random.default_rng(0)
    letters = list("abcdefgh ")
    users = {}
    for u in range(6):
        text = "".join(rng.choice(letters, 200))
        xs = [text[i:i + 80] for i in range(0, 100, 4)]
        users[f"user{u}"] = (xs, [text[i + 80] for i in range(0, 100, 4)])
    write_leaf(tmp_path / "shk", "train", "a.json", users)
    write_leaf(tmp_path / "shk", "test", "a.json", {"user0": users["user0"]})
    cfg = small_config(rounds=2, data={"dataset": "shakespeare", "path": str(tmp_path / "shk"), "num_clients": 6},
                       model={"name": "char_lstm", "hidden": 16}, clients={"per_round": 3},
                       algorithm={"name": "autoflip", "pruning": {"explore_epochs": 1, "structured_fraction": 0.25}})
    run_dir = new_run(cfg)
    summary = execute(cfg, run_dir)
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert summary["totals"]["clients_failed"] == 0 and summary["totals"]["clients_done"] > 0
    assert state.weights["lstm.weight_hh_l0"].shape == (4 * 12, 12)  # 16 hidden units, a quarter removed


# Server optimizers step eta per coordinate per round: 3 rounds need a larger step than their default.
REAL_DATA_PARAMS = {name: {"eta": 0.05, "tau": 0.01} for name in ("fedadam", "fedyogi", "fedadagrad")}
# SCAFFOLD's control update assumes plain SGD clients; the others keep client momentum.
REAL_DATA_MOMENTUM = {"scaffold": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS.names())
def test_every_algorithm_learns_on_real_data(small_config, fashion_mnist_dir, algorithm):
    cfg = small_config(
        rounds=3, data={"dataset": "fashion_mnist", "path": str(fashion_mnist_dir), "num_clients": 20,
                        "partition": {"scheme": "iid"}, "max_train_samples": 4000, "max_test_samples": 1000},
        model={"name": "mlp", "hidden": 64, "layers": 1},
        clients={"per_round": 5, "batch_size": 20,
                 "optimizer": {"name": "sgd", "lr": 0.05, "momentum": REAL_DATA_MOMENTUM.get(algorithm, 0.9)}},
        algorithm={"name": algorithm, "pruning": {"explore_epochs": 1, "explore_fraction": 0.5, "ramp_rounds": 1,
                                                   "adjust_every": 1},
                   "params": REAL_DATA_PARAMS.get(algorithm, {})},
        eval={"every": 3, "clients": False},
    )
    summary = execute(cfg, new_run(cfg))
    assert summary["final_accuracy"] > 0.5, algorithm  # chance is 0.10


def _warm(small_config, warm_start):
    return small_config(model={"name": "mlp", "hidden": 16},
                        algorithm={"name": "autoflip_unstructured",
                                   "pruning": {"explore_fraction": 0.5, "explore_epochs": 2, "warm_start": warm_start}})


def test_warm_start_adds_the_explorers_sample_weighted_mean_change(small_config):
    ds, factory, algo, runner = algorithm_parts(_warm(small_config, True))
    start = algo.init_state(factory(None).state_dict())
    plan = algo.setup_plan(start, ds.num_clients)
    alone = [runner.run([t], plan.broadcast) for t in plan.tasks]  # each explorer's own change
    sizes = [len(ds.client_train_rows(t.client)) for t in plan.tasks]
    assert len(set(sizes)) > 1
    state, _ = algo.finish_setup(start, plan, runner.run(plan.tasks, plan.broadcast))
    for name, w0 in start.weights.items():
        change = sum(n * p.stats["delta"].mean(torch.float64)[name] for n, p in zip(sizes, alone)) / sum(sizes)
        torch.testing.assert_close(state.weights[name].double(), w0.double() + change, rtol=1e-5, atol=1e-6)
        assert change.abs().max() > 1e-4

    _, cold_factory, cold, cold_runner = algorithm_parts(_warm(small_config, False))
    cold_start = cold.init_state(cold_factory(None).state_dict())
    cold_state, _ = cold.finish_setup(cold_start, plan, cold_runner.run(plan.tasks, plan.broadcast))
    assert all(torch.equal(cold_state.weights[k], v) for k, v in cold_start.weights.items())  # no warm start: theta0


def test_warm_start_bills_each_explorers_second_upload(small_config):
    rows = {}
    for warm in (False, True):
        cfg = _warm(small_config, warm).model_copy(update={"rounds": 1})
        run_dir = new_run(cfg)
        execute(cfg, run_dir)
        rows[warm] = pq.read_table(run_dir / "rounds.parquet").to_pylist()[0]
    assert rows[True]["phase"] == "explore" and rows[True]["clients_done"] == 6
    # The change has the squared deviations' shapes, so the explorers' uplink exactly doubles.
    assert rows[True]["bytes_up"] == 2 * rows[False]["bytes_up"]
    assert rows[True]["bytes_down"] == rows[False]["bytes_down"]
    assert rows[True]["flops_executed"] == rows[False]["flops_executed"]


@pytest.mark.parametrize("name, billed", [("autoflip", True), ("autoflip_static", False)])
def test_secure_aggregation_uploads_and_bills_the_squared_deviations(small_config, name, billed):
    """Under secure aggregation clients upload their squared deviations (kept entries, like
    the delta), so an adaptive method's uplink doubles and the guidance is the same; a static
    mask needs no deviations and pays nothing more."""
    tallies, stats = {}, {}
    for secure in (False, True):
        cfg = small_config(model=MLP, algorithm=autoflip(name, sparsity=0.5, ramp_rounds=0, structured_fraction=0.25,
                                                         secure_aggregation=secure))
        ds, factory, algo, runner, state = explored(cfg)
        plan = algo.configure_round(state, 0, [0, 1, 10])
        partial = runner.run(plan.tasks, plan.broadcast)
        tallies[secure], stats[secure] = partial.train, partial.stats["sq_dev"]
    assert tallies[True].bytes_up == (2 if billed else 1) * tallies[False].bytes_up
    assert tallies[True].bytes_down == tallies[False].bytes_down
    assert all(torch.equal(stats[True].total[k], stats[False].total[k]) for k in stats[False].total)
