import math

import pytest
import torch

from autoflip.masks import (
    jaccard,
    layer_sparsity,
    magnitude_mask,
    overall_sparsity,
    prune_count,
    random_mask,
    sparsity_schedule,
    unstructured_mask,
)


def _scores(seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (16, 3, 3, 3), "fc1.weight": (64, 100), "fc2.weight": (10, 7)}
    if ties:
        return {k: torch.randint(0, 4, s, generator=g).float() for k, s in shapes.items()}
    return {k: torch.rand(s, generator=g) for k, s in shapes.items()}


def _pruned(masks):
    return sum(int((~m).sum()) for m in masks.values())


def test_sparsity_schedule_ramps_linearly_then_stays_flat():
    assert sparsity_schedule(0, 0.8, 4) == 0.0
    assert sparsity_schedule(1, 0.8, 4) == pytest.approx(0.2)
    assert sparsity_schedule(3, 0.8, 4, start=0.4) == pytest.approx(0.7)
    assert sparsity_schedule(4, 0.8, 4) == 0.8
    assert sparsity_schedule(100, 0.8, 4) == 0.8
    assert sparsity_schedule(0, 0.3, 0) == 0.3
    with pytest.raises(ValueError):
        sparsity_schedule(0, 1.0, 3)


@pytest.mark.parametrize("method", ["kthvalue", "sort"])
@pytest.mark.parametrize("sparsity", [0.0, 0.29, 0.5, 0.9, 0.999])
def test_global_allocation_prunes_an_exact_count(method, sparsity):
    scores = _scores()
    masks = unstructured_mask(scores, sparsity, "global", method)
    n = sum(s.numel() for s in scores.values())
    assert _pruned(masks) == math.floor(sparsity * n + 1e-9)
    assert all(m.dtype == torch.bool and m.shape == scores[k].shape for k, m in masks.items())


@pytest.mark.parametrize("method", ["kthvalue", "sort"])
def test_layer_allocation_prunes_an_exact_count_per_tensor(method):
    scores = _scores(ties=True)
    masks = unstructured_mask(scores, 0.29, "layer", method)
    for name, m in masks.items():
        assert int((~m).sum()) == math.floor(0.29 * m.numel() + 1e-9)
    assert prune_count(0.29, 100) == 29


def test_kept_entries_score_at_least_the_pruned_ones():
    scores = _scores(3)
    masks = unstructured_mask(scores, 0.5, "global")
    kept = torch.cat([s[m] for s, m in zip(scores.values(), masks.values())])
    pruned = torch.cat([s[~m] for s, m in zip(scores.values(), masks.values())])
    assert kept.min() >= pruned.max()


def test_global_allocation_prunes_low_score_layers_more():
    g = torch.Generator().manual_seed(0)
    scores = {"low": torch.rand(1000, generator=g), "high": 1.0 + torch.rand(1000, generator=g)}
    sparsity = layer_sparsity(unstructured_mask(scores, 0.4, "global"))
    assert sparsity["low"] == pytest.approx(0.8) and sparsity["high"] == 0.0
    per_layer = layer_sparsity(unstructured_mask(scores, 0.4, "layer"))
    assert per_layer == {"low": pytest.approx(0.4), "high": pytest.approx(0.4)}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("allocation", ["global", "layer"])
def test_kthvalue_and_sort_give_identical_masks(ties, allocation):
    for seed in range(3):
        scores = _scores(seed, ties)
        for sparsity in (0.1, 0.37, 0.8):
            a = unstructured_mask(scores, sparsity, allocation, "kthvalue")
            b = unstructured_mask(scores, sparsity, allocation, "sort")
            assert all(torch.equal(a[k], b[k]) for k in scores)


def test_ties_break_by_flat_index():
    masks = unstructured_mask({"a": torch.ones(2, 3), "b": torch.ones(4)}, 0.5, "global")
    assert masks["a"].tolist() == [[False, False, False], [False, False, True]]
    assert masks["b"].all()


@pytest.mark.parametrize("method", ["kthvalue", "sort"])
def test_scores_above_2_pow_24_elements(method):
    n = 2**24 + 3
    scores = {"big": torch.arange(n, dtype=torch.float64).flip(0), "small": torch.arange(5, dtype=torch.float64)}
    masks = unstructured_mask(scores, 0.5, "global", method)
    count = (n + 5) // 2
    assert _pruned(masks) == count
    # The pooled lowest scores are small's 0..4 and then big's tail, values 5 onwards.
    assert not masks["small"][:4].any() and masks["small"][4]  # keep_at_least=1 protects its maximum
    assert int((~masks["big"]).sum()) == count - 4
    assert bool(masks["big"][: n - (count - 4)].all()) and not bool(masks["big"][n - (count - 4):].any())


def test_keep_at_least_stops_global_allocation_wiping_out_a_layer():
    scores = {"weak": torch.zeros(10), "strong": torch.arange(1.0, 11.0)}
    masks = unstructured_mask(scores, 0.55, "global", keep_at_least=2)
    assert int(masks["weak"].sum()) == 2 and _pruned(masks) == 11
    assert not unstructured_mask(scores, 0.55, "global", keep_at_least=0)["weak"].any()
    with pytest.raises(ValueError, match="keeps at least"):
        unstructured_mask({"a": torch.ones(3), "b": torch.ones(3)}, 0.9, "global", keep_at_least=1)


def test_zero_sparsity_keeps_all_and_bad_arguments_are_errors():
    scores = _scores()
    assert all(m.all() for m in unstructured_mask(scores, 0.0, "global").values())
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="sparsity"):
            unstructured_mask(scores, bad, "global")
    with pytest.raises(ValueError, match="allocation"):
        unstructured_mask(scores, 0.5, "pooled")
    with pytest.raises(ValueError, match="NaN"):
        unstructured_mask({"w": torch.tensor([1.0, float("nan")])}, 0.5, "layer")


def test_random_mask_has_exact_per_layer_sparsity_and_is_seeded():
    reference = {"conv.weight": torch.zeros(16, 3, 3, 3), "fc1.weight": torch.zeros(64, 100), "fc1.bias": torch.zeros(64)}
    target = {"conv.weight": 0.25, "fc1.weight": 0.7}
    a = random_mask(reference, target, torch.Generator().manual_seed(5))
    b = random_mask({k: v.shape for k, v in reference.items()}, target, torch.Generator().manual_seed(5))
    c = random_mask(reference, target, torch.Generator().manual_seed(6))
    assert set(a) == set(target)
    for name, s in target.items():
        assert int((~a[name]).sum()) == math.floor(s * a[name].numel())
        assert torch.equal(a[name], b[name])
    assert not torch.equal(a["fc1.weight"], c["fc1.weight"])
    with pytest.raises(ValueError, match="no reference"):
        random_mask(reference, {"missing.weight": 0.5}, torch.Generator())


def test_magnitude_mask_prunes_the_smallest_absolute_weights():
    w = {"w": torch.tensor([[0.5, -3.0, 0.1], [-0.2, 2.0, -0.05]])}
    masks = magnitude_mask(w, 0.5, "layer")
    assert masks["w"].tolist() == [[True, True, False], [False, True, False]]


def test_sparsity_bookkeeping_on_hand_made_masks():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([[True, True], [True, False]])}
    assert layer_sparsity(masks) == {"a": 0.75, "b": 0.25}
    assert overall_sparsity(masks) == 0.5
    assert overall_sparsity({}) == 0.0


def test_jaccard_on_hand_made_masks():
    a = {"w": torch.tensor([True, True, True, False])}
    b = {"w": torch.tensor([False, True, True, True])}
    assert jaccard(a, a) == 1.0
    assert jaccard(a, b) == pytest.approx(2 / 4)
    # Pooled over tensors, not averaged: one shared name, one new name counting as empty before.
    assert jaccard(a, {**a, "v": torch.tensor([True, False])}) == pytest.approx(3 / 4)
    # A shape change has no comparable coordinates: that tensor is skipped.
    assert jaccard({**a, "v": torch.ones(3, dtype=torch.bool)}, {**b, "v": torch.ones(2, dtype=torch.bool)}) == pytest.approx(0.5)
    assert math.isnan(jaccard({"v": torch.ones(3, dtype=torch.bool)}, {"v": torch.ones(2, dtype=torch.bool)}))
    assert jaccard({"w": torch.zeros(3, dtype=torch.bool)}, {"w": torch.zeros(3, dtype=torch.bool)}) == 1.0


def test_freeze_with_pruned_entries_scored_minus_inf_keeps_the_count_exact():
    g = torch.Generator().manual_seed(1)
    prev = unstructured_mask({"w": torch.rand(1000, generator=g)}, 0.3, "layer")
    scores = torch.rand(1000, generator=g).masked_fill(~prev["w"], float("-inf"))
    fresh = unstructured_mask({"w": scores}, 0.5, "layer")
    # How AutoFLIP freezes regrowth: nothing pruned comes back, and the count stays exact.
    assert not bool((fresh["w"] & ~prev["w"]).any()) and int((~fresh["w"]).sum()) == 500


def test_jaccard_pools_every_tensor_after_a_reshaped_one():
    """A tensor whose shape changed is skipped, and the ones after it still count."""
    prev = {"a": torch.ones(4, dtype=torch.bool), "b": torch.tensor([True, True, False, False]),
            "c": torch.tensor([True, False])}
    new = {"a": torch.ones(3, dtype=torch.bool), "b": torch.tensor([True, False, True, False]),
           "c": torch.tensor([True, True])}
    # b: |and| = 1, |or| = 3; c: 1 and 2  ->  2 / 5
    assert jaccard(prev, new) == pytest.approx(2 / 5)
    assert math.isnan(jaccard({"a": torch.ones(4, dtype=torch.bool)}, {"a": torch.ones(3, dtype=torch.bool)}))


def test_random_mask_covers_names_listed_after_an_unlisted_one():
    ref = {"skip": torch.zeros(4), "w": torch.zeros(10), "v": torch.zeros(20)}
    masks = random_mask(ref, {"w": 0.5, "v": 0.25}, torch.Generator().manual_seed(0))
    assert set(masks) == {"w", "v"} and int((~masks["w"]).sum()) == 5 and int((~masks["v"]).sum()) == 5


def test_layer_sparsity_of_an_empty_tensor_is_zero():
    assert layer_sparsity({"e": torch.ones(0, dtype=torch.bool), "w": torch.tensor([True, False])}) == {"e": 0.0, "w": 0.5}


def test_global_magnitude_pruning_never_wipes_out_a_layer():
    """Under global allocation a layer of tiny weights would lose every entry; keep_at_least
    (1 by default, passed through) keeps its largest one and prunes elsewhere instead."""
    weights = {"tiny": torch.full((4,), 1e-6) * torch.arange(1, 5), "big": torch.arange(1.0, 9.0)}
    masks = magnitude_mask(weights, 0.5, "global")
    assert masks["tiny"].tolist() == [False, False, False, True]
    assert int((~masks["tiny"]).sum()) + int((~masks["big"]).sum()) == 6
    assert magnitude_mask(weights, 0.5, "global", keep_at_least=0)["tiny"].sum() == 0
