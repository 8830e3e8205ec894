"""Drop and grow at constant sparsity: the mask really adapts, the signal is billed."""
import math

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from autoflip.growth import PrunedGradientProbe, drop_and_grow, drop_fraction, top_k_signal
from conftest import explored
from raysim.costs.payload import encode_masked
from raysim.engine.stats import merge_all
from raysim.experiment import execute, new_run

MLP = {"name": "mlp", "hidden": 32}


def _cfg(small_config, growth, rounds=4, **pruning):
    return small_config(rounds=rounds, model=MLP, algorithm={"name": "autoflip_unstructured", "pruning": {
        "sparsity": 0.5, "ramp_rounds": 0, "explore_epochs": 1, "explore_fraction": 0.5, "growth": growth,
        "drop_fraction": 0.3, "anneal_rounds": 3, **pruning}})


def test_drop_fraction_follows_rigls_cosine_and_ends_at_zero():
    assert drop_fraction(0, 0.4, 4) == pytest.approx(0.4)
    assert drop_fraction(2, 0.4, 4) == pytest.approx(0.2)
    assert drop_fraction(4, 0.4, 4) == drop_fraction(9, 0.4, 4) == drop_fraction(-1, 0.4, 4) == 0.0


def test_drop_and_grow_moves_exact_counts_from_the_weakest_kept_to_the_strongest_pruned():
    mask = torch.tensor([True, True, True, True, False, False, False, False, False, False])
    keep = torch.tensor([0.9, 0.1, 0.5, 0.2, 0, 0, 0, 0, 0, 0])
    grow = torch.tensor([0, 0, 0, 0, 0.3, 0.0, 0.8, 0.1, 0.0, 0.0])
    new, grown = drop_and_grow({"w": mask}, {"w": keep}, {"w": grow}, 0.5)
    # floor(0.5 * 4) = 2 move: the kept with scores 0.1 and 0.2 go, the pruned with 0.8 and 0.3 come
    assert new["w"].tolist() == [True, False, True, False, True, False, True, False, False, False]
    assert grown["w"].tolist() == [False] * 4 + [True, False, True] + [False] * 3
    assert int(new["w"].sum()) == int(mask.sum())
    # only one pruned entry scores above 0: one moves, the count still holds
    new, grown = drop_and_grow({"w": mask}, {"w": keep}, {"w": grow * (grow > 0.5)}, 0.5)
    assert int(grown["w"].sum()) == 1 and int(new["w"].sum()) == 4 and not bool(new["w"][1])


def test_top_k_signal_sends_the_largest_pruned_gradients_only():
    mask = torch.tensor([True] * 50 + [False] * 50)
    sums = torch.linspace(-1, 1, 100)
    values, sent = top_k_signal({"w": sums}, {"w": mask}, 0.04)  # ceil(0.04 * 50) = 2
    assert sent["w"].nonzero().reshape(-1).tolist() == [98, 99] and not bool(sent["w"][:50].any())
    assert torch.equal(values["w"][sent["w"]], sums[98:].abs()) and int((values["w"] != 0).sum()) == 2


def test_the_probe_sums_the_dense_gradient_of_pruned_weights_only():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 3)
    mask = torch.rand(3, 6) > 0.5
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    probe = PrunedGradientProbe(layer, {"weight": mask})
    want = torch.zeros(3, 6)
    for batch in (slice(0, 4), slice(4, 8)):
        layer.zero_grad()
        F.cross_entropy(layer(x[batch]), y[batch]).backward()
        want += layer.weight.grad * ~mask
    probe.close()
    torch.testing.assert_close(probe.sums["weight"], want)
    assert bool(probe.sums["weight"][~mask].abs().gt(0).all()) and not bool(probe.sums["weight"][mask].any())
    F.cross_entropy(layer(x), y).backward()  # closed: no longer summing
    torch.testing.assert_close(probe.sums["weight"], want)


def test_gradient_growth_changes_the_mask_at_constant_sparsity_and_grown_weights_start_at_zero(small_config):
    ds, _, algo, runner, state = explored(_cfg(small_config, "gradient"))
    before = {k.removeprefix("mask/"): v for k, v in state.buffers.items() if k.startswith("mask/")}
    plan = algo.configure_round(state, 0, [0, 1, 2, 10])
    per_client = [runner.run([t], plan.broadcast) for t in plan.tasks]
    merged = merge_all(per_client)
    after, metrics = algo.aggregate(state, plan, merged)
    masks = {k.removeprefix("mask/"): v for k, v in after.buffers.items() if k.startswith("mask/")}
    signal = merged.stats["grow"].mean()
    for name, mask in masks.items():
        grew = mask & ~before[name]
        assert int(mask.sum()) == int(before[name].sum())  # the exact count
        # 30 % of the kept weights may move, as far as the clients' reported candidates reach
        candidates = int((signal[name] > 0).sum())
        assert not bool((signal[name] > 0)[before[name]].any())  # only pruned weights are reported
        assert int(grew.sum()) == min(math.floor(0.3 * int(before[name].sum())), candidates) > 0
        assert bool((signal[name][grew] > 0).all())
        assert not bool(after.weights[name][grew].any())  # grown weights start at exactly 0
        assert not bool(after.buffers["server_momentum/" + name][grew].any())
        guidance = after.buffers["guidance/" + name]  # grown: the mean of the previously kept guidance
        assert torch.allclose(guidance[grew], guidance[before[name]].mean().expand(int(grew.sum())))
    assert 0 < metrics["grown_fraction"] and metrics["mask_churn"] < 0.99  # at least 1 % of the mask moved

    # The sparse statistic sums like any other: another grouping, the same growth.
    regrouped = merge_all([merge_all(per_client[2:]), merge_all(per_client[:2])])
    again, _ = algo.aggregate(state, plan, regrouped)
    assert all(torch.equal(again.buffers[k], after.buffers[k]) for k in after.buffers if k.startswith("mask/"))


def test_the_growth_signal_is_billed_as_its_encoded_length(small_config):
    ds, _, algo, runner, state = explored(_cfg(small_config, "gradient"))
    plan = algo.configure_round(state, 0, [1])
    with_signal = runner.run(plan.tasks, plan.broadcast)
    _, _, plain, plain_runner, plain_state = explored(_cfg(small_config, "none"))
    without = plain_runner.run(plan.tasks, plain.configure_round(plain_state, 0, [1]).broadcast)
    grow = with_signal.stats["grow"].mean()
    sent = {k: v != 0 for k, v in grow.items()}
    extra = len(encode_masked(grow, sent, include_mask=True))
    assert with_signal.train.bytes_up == without.train.bytes_up + extra
    assert with_signal.metrics["grow_signal_bytes"] == extra  # what the round log reports as the signal's share
    kept = sum(int(m.sum()) for m in plan.broadcast.masks.values())
    assert sum(int(s.sum()) for s in sent.values()) <= math.ceil(0.02 * kept) + len(sent)


@pytest.mark.parametrize("growth", ["none", "random", "gradient"])
def test_a_run_adapts_its_mask_only_with_growth_and_stops_when_the_fraction_anneals(small_config, growth):
    cfg = _cfg(small_config, growth, rounds=5)
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    train = [r for r in pq.read_table(run_dir / "rounds.parquet").to_pylist() if r["phase"] == "train"]
    assert [r["sparsity"] for r in train] == pytest.approx([0.5] * 5, abs=1e-3)
    churn = [r["mask_churn"] for r in train]
    if growth == "none":
        assert churn == [1.0] * 5  # MinMax guidance cannot reorder kept and pruned at constant sparsity
    else:
        assert all(c < 0.99 for c in churn[:3]) and churn[3:] == [1.0, 1.0]  # annealed to 0 after 3 rounds
    if growth == "random":  # the control uploads nothing extra
        none_dir = new_run(_cfg(small_config, "none", rounds=5))
        execute(_cfg(small_config, "none", rounds=5), none_dir)
        none_rows = [r for r in pq.read_table(none_dir / "rounds.parquet").to_pylist() if r["phase"] == "train"]
        assert [r["bytes_up"] for r in train] == [r["bytes_up"] for r in none_rows]


def test_growth_with_frozen_regrowth_is_refused(small_config):
    from raysim.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="regrowth='freeze' forbids"):
        _cfg(small_config, "gradient", regrowth="freeze")
