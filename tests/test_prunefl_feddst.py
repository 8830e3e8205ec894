"""PruneFL and the FedDST-style baseline: their masks move when they say, stay at the
exact sparsity, and what they upload for it is billed byte for byte."""
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from autoflip.growth import SquaredGradientProbe
from conftest import algorithm_parts
from raysim.costs.payload import encode_masked
from raysim.engine.api import ClientData
from raysim.engine.stats import merge_all
from raysim.experiment import execute, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

MLP = {"name": "mlp", "hidden": 32}


def _cfg(small_config, name, rounds=4, **pruning):
    return small_config(rounds=rounds, model=MLP, algorithm={
        "name": name, "pruning": {"sparsity": 0.6, "adjust_every": 2, "allocation": "layer", **pruning}})


def _masks(state):
    return {k.removeprefix("mask/"): v for k, v in state.buffers.items() if k.startswith("mask/")}


def _kept(masks):
    return {k: int(m.sum()) for k, m in masks.items()}


def test_squared_gradient_probe_sums_every_entrys_squared_gradient_over_steps():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    probe = SquaredGradientProbe(model, ["weight"])
    grads = []
    for _ in range(2):
        model.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        grads.append(model.weight.grad.clone())
    probe.close()
    assert torch.allclose(probe.sums["weight"], grads[0] ** 2 + grads[1] ** 2)
    model(torch.randn(4, 3)).sum().backward()  # closed: no longer summed
    assert torch.allclose(probe.sums["weight"], grads[0] ** 2 + grads[1] ** 2)


@pytest.mark.parametrize("name", ["prunefl", "feddst"])
def test_the_mask_moves_only_in_adjustment_rounds_at_the_exact_sparsity(small_config, name):
    cfg = _cfg(small_config, name, rounds=4)
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    rows = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    assert sum(r["clients_failed"] for r in rows) == 0
    churn = [r["mask_churn"] for r in rows]
    # Jaccard similarity of consecutive masks: 1 between adjustments, below 1 after rounds 2 and 4.
    assert churn[0] == 1.0 and churn[2] == 1.0
    assert churn[1] < 0.99 and churn[3] < 0.99
    assert [r["sparsity"] for r in rows] == pytest.approx([0.6] * 4, abs=1e-3)
    _, factory, algo, _ = algorithm_parts(cfg)
    start = _kept(_masks(algo.init_state(factory(None).state_dict())))
    final = load_checkpoint(latest_checkpoint(run_dir))
    assert _kept(_masks(final)) == start  # the count per tensor never moves
    for name_, mask in _masks(final).items():
        assert not bool(final.weights[name_][~mask].any())


def _one_round(cfg, round_idx):
    ds, factory, algo, runner = algorithm_parts(cfg)
    state = algo.init_state(factory(None).state_dict())
    plan = algo.configure_round(state, round_idx, [0, 1, 2, 3])
    return ds, algo, runner, state, plan


def test_prunefl_uploads_dense_squared_gradients_billed_and_keeps_the_most_important(small_config):
    cfg = _cfg(small_config, "prunefl")
    ds, algo, runner, state, plan = _one_round(cfg, 1)  # the mask chosen after round 2 readjusts
    _, _, _, _, quiet = _one_round(cfg, 0)
    model = runner.model_for(plan.broadcast)
    task = plan.tasks[0]
    x, y = (torch.from_numpy(a[ds.client_train_rows(task.client)]) for a in (ds.train.x, ds.train.y))
    data = ClientData(x, y)
    adjusting = algo.client_update(model, data, task, plan.broadcast)
    sent = adjusting.contribution["importance"].mean()
    assert set(sent) == set(plan.broadcast.masks)
    pruned = {k: ~m for k, m in plan.broadcast.masks.items()}
    assert all(bool(sent[k][pruned[k]].gt(0).any()) for k in sent)  # pruned entries score too
    model = runner.model_for(plan.broadcast)
    plain = algo.client_update(model, data, quiet.tasks[0], plan.broadcast)  # same client, round 1: no readjustment
    dense = len(encode_masked(sent, {}, cfg.payload.compression, include_mask=False))
    assert adjusting.upload_bytes - plain.upload_bytes == dense
    assert "importance" not in plain.contribution

    partial = runner.run(plan.tasks, plan.broadcast)
    after, _ = algo.aggregate(state, plan, partial)
    importance = partial.stats["importance"].mean()
    masks = _masks(after)
    assert _kept(masks) == _kept(plan.broadcast.masks)
    assert any(not torch.equal(masks[k], plan.broadcast.masks[k]) for k in masks)
    for k, m in masks.items():
        assert importance[k][m].min() >= importance[k][~m].max()


def test_feddst_clients_readjust_their_own_masks_and_the_server_averages_over_keepers(small_config):
    cfg = _cfg(small_config, "feddst", drop_fraction=0.3)
    ds, algo, runner, state, plan = _one_round(cfg, 1)
    alone = [runner.run([t], plan.broadcast) for t in plan.tasks]
    old = plan.broadcast.masks
    local = []
    for p in alone:
        vote = {k: v.bool() for k, v in p.stats["mask_vote"].mean().items()}
        assert _kept(vote) == _kept(old)  # drop and grow keep each tensor's count
        assert any(not torch.equal(vote[k], old[k]) for k in old)
        local.append(vote)
        delta = p.stats["delta"].mean()
        for k, m in vote.items():
            assert not bool(delta[k][~m].any())  # nothing uploaded outside the client's own mask
    merged = merge_all(alone)
    after, _ = algo.aggregate(state, plan, merged)
    sizes = [len(ds.client_train_rows(t.client)) for t in plan.tasks]
    for n, task, p in zip(sizes, plan.tasks, alone):  # the readjusting batch is billed as processed examples
        assert p.train.examples == task.epochs * n + min(cfg.clients.batch_size, n)
    for k in old:
        total = sum(n * p.stats["delta"].mean(torch.float64)[k] for n, p in zip(sizes, alone))
        keepers = sum(n * m[k].double() for n, m in zip(sizes, local))
        step = cfg.algorithm.server_lr * total / keepers.clamp_min(1)  # fresh server momentum: the mean itself
        expected = torch.where(keepers > 0, state.weights[k].double() + step, 0.0)
        kept = _masks(after)[k]
        assert torch.allclose(after.weights[k][kept].double(), expected[kept], atol=1e-6)
        assert int(kept.sum()) == int(old[k].sum())
        assert bool((keepers[kept] > 0).all())  # only entries some client kept
        grown = kept & ~old[k]
        assert bool(grown.any())  # a grown entry starts at 0 on the server and takes the keepers' mean
