import itertools
from dataclasses import fields

import numpy as np
import pytest
import torch

from raysim.engine.counters import ClientCounters, EvalCounters
from raysim.engine.seeds import derive_seed
from raysim.engine.stats import ClientFailure, Partial, WeightedSum, merge_all


def _sums(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [WeightedSum.of({"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g)}, float(k + 1)) for k in range(n)]


def test_weighted_sum_is_the_weighted_mean():
    sums = _sums()
    merged = sums[0]
    for s in sums[1:]:
        merged = merged + s
    xs = [s.total["w"] / s.weight for s in sums]
    expect = sum(x * s.weight for x, s in zip(xs, sums)) / sum(s.weight for s in sums)
    assert torch.allclose(merged.mean()["w"], expect.float(), atol=1e-6)
    assert merged.weight == sum(range(1, 7))


def test_grouping_does_not_change_the_float32_result():
    sums = _sums(8)
    flat = merge_all([Partial({"d": s}) for s in sums]).stats["d"].mean()
    for perm in itertools.islice(itertools.permutations(range(8)), 0, 40320, 997):
        pairs = [sums[perm[i]] + sums[perm[i + 1]] for i in range(0, 8, 2)]
        tree = (pairs[0] + pairs[1]) + (pairs[2] + pairs[3])
        assert all(torch.equal(tree.mean()[k], flat[k]) for k in flat)


def test_mismatched_sums_and_empty_mean_are_errors():
    with pytest.raises(ValueError, match="different tensors"):
        WeightedSum.of({"a": torch.ones(1)}, 1) + WeightedSum.of({"b": torch.ones(1)}, 1)
    with pytest.raises(ValueError, match="empty"):
        WeightedSum({"a": torch.zeros(1)}, 0.0).mean()


def test_non_finite_detected():
    assert not WeightedSum.of({"a": torch.tensor([float("nan")])}, 1).is_finite()
    assert not WeightedSum.of({"a": torch.tensor([float("inf")])}, 1).is_finite()
    assert WeightedSum.of({"a": torch.tensor([1.0])}, 1).is_finite()


def test_partial_merge_sums_counters_maxes_and_keeps_failures():
    a, b = Partial(), Partial()
    a.train = ClientCounters(done=2, flops_executed=10.0, sim_time_s=3.0)
    a.metrics = {"only_a": 1.0, "both": 2.0}
    b.train = ClientCounters(done=1, sim_time_s=5.0)
    b.explore.bytes_up = 7
    b.evaluate.correct = 4
    b.metrics = {"both": 0.5}
    b.failures.append(ClientFailure(0, 7, "train", "boom"))
    b.stats["d"] = WeightedSum.of({"x": torch.ones(2)}, 2)
    m = a + b
    assert m.train == ClientCounters(done=3, flops_executed=10.0, sim_time_s=5.0)
    assert m.explore == ClientCounters(bytes_up=7) and m.evaluate == EvalCounters(correct=4)
    assert m.metrics == {"only_a": 1.0, "both": 2.5}
    assert [f.client for f in m.failures] == [7] and m.stats["d"].weight == 2
    assert a.train.done == 2 and a.metrics == {"only_a": 1.0, "both": 2.0}  # the operands are unchanged


def test_seeds_are_deterministic_and_distinct():
    assert derive_seed(1, "client", 3, 4) == derive_seed(1, "client", 3, 4)
    seen = {derive_seed(s, p, r, c) for s in (0, 1) for p in ("client", "sample") for r in range(5) for c in range(5)}
    assert len(seen) == 100
    with pytest.raises(ValueError, match="purpose"):
        derive_seed(0, "nope")
    assert 0 <= derive_seed(2**40, "init") < 2**63 and isinstance(np.random.default_rng(derive_seed(0, "init")), np.random.Generator)


def test_merge_all_is_a_left_fold_in_the_given_order():
    values = [1.0, 2.0**60, -(2.0**60), 3.0]
    parts = []
    for i, value in enumerate(values):
        p = Partial({"d": WeightedSum.of({"w": torch.tensor([value], dtype=torch.float64)}, 1.0)})
        p.add_failure(0, i, "train", "x")
        parts.append(p)
    merged = merge_all(parts)
    assert [f.client for f in merged.failures] == [0, 1, 2, 3]
    assert merged.stats["d"].total["w"].item() == ((1.0 + 2.0**60) - 2.0**60) + 3.0 == 3.0  # reversed: 4.0


def test_counters_sum_every_field_but_keep_the_slowest_clients_time():
    summed = [f.name for f in fields(ClientCounters) if f.name != "sim_time_s"]
    a = ClientCounters(**dict(zip(summed, range(1, 100))), sim_time_s=7.0)
    b = ClientCounters(**dict(zip(summed, range(10, 100))), sim_time_s=2.0)
    for s in (a + b, b + a):
        assert s.sim_time_s == 7.0
        assert [getattr(s, name) for name in summed] == [i + j for i, j in zip(range(1, 100), range(10, 100))][
            :len(summed)]
    assert EvalCounters(1, 2, 3, 4.0, 5) + EvalCounters(1, 1, 1, 1.0, 1) == EvalCounters(2, 3, 4, 5.0, 6)
    with pytest.raises(TypeError, match="cannot add"):
        a + EvalCounters()
    with pytest.raises(AttributeError):
        a.flops_excuted  # a misspelt counter is an error, not a silent 0


def test_a_failure_records_round_client_kind_and_reason_and_counts_by_kind():
    p = Partial()
    p.add_failure(4, 17, "explore", "RuntimeError: boom")
    p.add_failure(4, 18, "train", "x")
    assert p.failures[0] == ClientFailure(4, 17, "explore", "RuntimeError: boom")
    assert (p.explore.failed, p.train.failed, p.evaluate.failed) == (1, 1, 0)
    with pytest.raises(ValueError, match="unknown task kind"):
        p.add_failure(4, 19, "trian", "x")


def test_per_client_states_merge_as_a_union_in_any_order():
    a, b = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    left = Partial(client_states={1: a}) + Partial(client_states={2: b})
    right = merge_all([Partial(client_states={2: b}), Partial(), Partial(client_states={1: a})])
    assert left.client_states.keys() == right.client_states.keys() == {1, 2}
    assert left.client_states[1] is a and right.client_states[2] is b


def _client_tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(64, 33, generator=g) * 10 ** float(torch.randint(-6, 6, (1,), generator=g)),
            "b": torch.randn(7, generator=g)}


def _running_sum(make, weights) -> WeightedSum:
    p = Partial()
    for i, w in enumerate(weights):
        p.add_stats({"d": make(_client_tensors(i), w)})
    return p.stats["d"]


@pytest.mark.parametrize("weights", [[3, 60, 1, 17, 2**20, 5], [0.5, 3.25, 1 / 3, 7.0]])
def test_lazy_sums_add_exactly_as_scaled_copies_do(weights):
    """A worker adds each client into its running sum in one pass (lazy) instead of copying it
    to float64 and scaling first (of): for integer weights the sum is the same bit for bit, and
    for others (where the one-pass add is not used) too."""
    eager, lazy = _running_sum(WeightedSum.of, weights), _running_sum(WeightedSum.lazy, weights)
    assert eager.weight == lazy.weight == float(sum(weights))
    for k in eager.total:
        assert lazy.total[k].dtype == torch.float64
        assert torch.equal(eager.total[k], lazy.total[k]), k


def test_a_lazy_sum_reads_pickles_and_merges_like_an_eager_one():
    import pickle

    t = _client_tensors(1)
    lazy, eager = WeightedSum.lazy(t, 4.0), WeightedSum.of(t, 4.0)
    back = pickle.loads(pickle.dumps(lazy))
    for s in (lazy, back):
        assert all(torch.equal(s.total[k], eager.total[k]) for k in t)
    assert torch.equal((WeightedSum.lazy(t, 2.0) + eager).total["w"], (WeightedSum.of(t, 2.0) + eager).total["w"])
    with pytest.raises(ValueError, match="different tensors"):
        WeightedSum.lazy({"x": torch.ones(1)}, 1.0).add_(WeightedSum.lazy({"y": torch.ones(1)}, 1.0))
    assert lazy.to("cpu") is lazy


@pytest.mark.parametrize("make", [WeightedSum.of, WeightedSum.lazy])
def test_finiteness_is_checked_entry_by_entry(make):
    bad = torch.ones(100)
    for value in (float("nan"), float("inf"), float("-inf")):
        bad[37] = value
        assert not make({"w": bad.clone()}, 2.0).is_finite(), value
    # Finite entries whose float64 sum overflows are still finite: the check is not fooled by it.
    huge = torch.full((4,), 1e308, dtype=torch.float64)
    assert WeightedSum({"w": huge}, 1.0).is_finite()
    assert make({"w": torch.full((4,), 3e38)}, 1.0).is_finite()  # float32 entries whose sum overflows
    assert make({"w": torch.ones(3), "n": torch.tensor([3])}, 1.0).is_finite()
    assert not make({"w": torch.ones(3)}, float("nan")).is_finite()
