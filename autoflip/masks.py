"""Unstructured masks: binarise scores at a sparsity, plus the baselines' masks and
the bookkeeping every round records (sparsity, churn).

Masks are `name -> bool Tensor` (True = kept) over the prunable weights only.
Counts are exact: a tensor (or, under global allocation, the pooled tensors) of n
entries loses exactly `prune_count(sparsity, n)` = floor(sparsity * n) of them,
the lowest scores first and, among equal scores, the lowest flat index first.
The kthvalue and sort selections implement that same order, so they return
identical masks; torch.quantile is never used (it fails above 2**24 elements).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch

Masks = dict[str, torch.Tensor]
Allocation = Literal["global", "layer"]
SelectMethod = Literal["kthvalue", "sort"]

# sparsity * n in float64 can land just below an integer (0.29 * 100 = 28.999...);
# this relative slack counts such products as the integer they stand for.
_COUNT_SLACK = 1e-12


def sparsity_schedule(round_idx: int, target: float, ramp_rounds: int, start: float = 0.0) -> float:
    """Sparsity for round `round_idx` (0-based): `start` at round 0, rising linearly to
    `target` at round `ramp_rounds`, then flat; ramp_rounds=0 gives target from round 0."""
    if round_idx < 0 or ramp_rounds < 0:
        raise ValueError(f"round_idx and ramp_rounds must be >= 0, got {round_idx} and {ramp_rounds}")
    for label, value in (("target", target), ("start", start)):
        _check_sparsity(value, label)
    if ramp_rounds == 0 or round_idx >= ramp_rounds:
        return float(target)
    return float(start + (target - start) * round_idx / ramp_rounds)


def prune_count(sparsity: float, numel: int) -> int:
    """How many of `numel` entries a sparsity prunes: floor(sparsity * numel), and
    never all of a non-empty tensor (sparsity < 1)."""
    _check_sparsity(sparsity)
    if numel == 0:
        return 0
    return min(math.floor(sparsity * numel * (1.0 + _COUNT_SLACK)), numel - 1)


def unstructured_mask(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    allocation: Allocation,
    method: SelectMethod = "kthvalue",
    keep_at_least: int = 1,
) -> Masks:
    """Keep the highest-scoring entries, pruning exactly floor(sparsity * n) of them.

    allocation "global": one threshold over all tensors pooled (in the dict's order,
    which fixes the tie-break by flat index), so low-score layers lose more.
    allocation "layer": every tensor pruned at `sparsity` on its own.
    keep_at_least: each tensor keeps at least min(keep_at_least, numel) entries, its
    highest-scoring ones. Under global allocation this stops a layer from being
    wiped out (which would cut the network); the entries it saves are pruned from
    the next-lowest scores elsewhere, so the total count stays exact. Where the
    count cannot be met under the floor, ValueError. 0 switches it off.
    """
    _check_sparsity(sparsity)
    if allocation not in ("global", "layer"):
        raise ValueError(f"unknown allocation '{allocation}'; use 'global' or 'layer'")
    if method not in ("kthvalue", "sort"):
        raise ValueError(f"unknown selection method '{method}'; use 'kthvalue' or 'sort'")
    if keep_at_least < 0:
        raise ValueError(f"keep_at_least must be >= 0, got {keep_at_least}")
    for name, score in scores.items():
        if score.is_floating_point() and bool(torch.isnan(score).any()):
            raise ValueError(f"scores for '{name}' hold NaN; they cannot be ranked")

    if allocation == "layer":
        masks = {}
        for name, score in scores.items():
            count = prune_count(sparsity, score.numel())
            floor = min(keep_at_least, score.numel())
            if score.numel() - count < floor:
                raise ValueError(
                    f"'{name}': pruning {count} of {score.numel()} entries leaves fewer than keep_at_least={floor}"
                )
            masks[name] = _keep_highest(score.reshape(-1), count, method).reshape(score.shape)
        return masks
    return _global_mask(scores, sparsity, method, keep_at_least)


def _global_mask(
    scores: Mapping[str, torch.Tensor], sparsity: float, method: SelectMethod, keep_at_least: int
) -> Masks:
    if not scores:
        return {}
    names = list(scores)
    flats = [scores[name].reshape(-1) for name in names]
    sizes = [f.numel() for f in flats]
    total = sum(sizes)
    count = prune_count(sparsity, total)
    # Each tensor's protected entries are the ones the same (score, index) order keeps last.
    protected = torch.cat([
        _keep_highest(f, f.numel() - min(keep_at_least, f.numel()), method) for f in flats
    ])
    candidates = ~protected
    n_candidates = int(candidates.sum())
    if count > n_candidates:
        raise ValueError(
            f"cannot prune {count} of {total} entries while each of {len(names)} tensors "
            f"keeps at least {keep_at_least}"
        )
    pooled = torch.cat(flats)
    keep = torch.ones(total, dtype=torch.bool, device=pooled.device)
    # masked_select keeps index order, so ties still break by pooled flat index.
    keep[candidates] = _keep_highest(pooled[candidates], count, method)
    return {
        name: part.reshape(scores[name].shape)
        for name, part in zip(names, torch.split(keep, sizes))
    }


def _keep_highest(flat: torch.Tensor, count: int, method: SelectMethod) -> torch.Tensor:
    """Keep-mask of a 1-D tensor with its `count` lowest entries pruned, ties pruned
    lowest index first."""
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if count == 0:
        return keep
    if method == "sort":
        keep[torch.sort(flat, stable=True).indices[:count]] = False
        return keep
    threshold = torch.kthvalue(flat, count).values
    below = flat < threshold
    keep &= ~below
    ties_to_prune = count - int(below.sum())
    keep[torch.nonzero(flat == threshold).reshape(-1)[:ties_to_prune]] = False
    return keep


def random_mask(
    shapes_or_reference: Mapping[str, torch.Tensor | Sequence[int]],
    per_layer_sparsity: Mapping[str, float],
    generator: torch.Generator,
) -> Masks:
    """A random mask with exactly prune_count(s, n) entries pruned per tensor.

    Covers the names in `per_layer_sparsity`, drawn in the reference's order so the
    same generator state gives the same mask; the reference gives shapes (tensors
    or shapes) and device. The caller keeps it fixed across rounds (persistent).
    """
    missing = [name for name in per_layer_sparsity if name not in shapes_or_reference]
    if missing:
        raise ValueError(f"no reference shape for {missing}")
    masks = {}
    for name, ref in shapes_or_reference.items():
        if name not in per_layer_sparsity:
            continue
        shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else tuple(ref)
        device = ref.device if isinstance(ref, torch.Tensor) else torch.device("cpu")
        numel = math.prod(shape)
        keep = torch.ones(numel, dtype=torch.bool)
        keep[torch.randperm(numel, generator=generator)[: prune_count(per_layer_sparsity[name], numel)]] = False
        masks[name] = keep.reshape(shape).to(device)
    return masks


def magnitude_mask(
    weights: Mapping[str, torch.Tensor],
    sparsity: float,
    allocation: Allocation,
    method: SelectMethod = "kthvalue",
    keep_at_least: int = 1,
) -> Masks:
    """Server-side magnitude pruning (PruneFL-style): |w| is the score."""
    scores = {name: w.detach().abs() for name, w in weights.items()}
    return unstructured_mask(scores, sparsity, allocation, method, keep_at_least)


def layer_sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of pruned entries per tensor (0.0 for an empty tensor)."""
    return {name: 1.0 - int(m.sum()) / m.numel() if m.numel() else 0.0 for name, m in masks.items()}


def overall_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of pruned entries over all masked tensors pooled (0.0 when empty)."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def jaccard(prev_masks: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> float:
    """Jaccard index |A & B| / |A | B| of the kept sets, as sets of (name, flat index).

    Over the union of names: a name in only one dict counts as an empty kept set on
    the other side. A name whose shapes differ (a structured step shrank it) has no
    comparable coordinates and is skipped. NaN when nothing is comparable; 1.0 when
    the comparable kept sets are identical (also when both are empty).
    """
    intersection = union = 0
    compared = False
    for name in dict.fromkeys([*prev_masks, *masks]):
        a, b = prev_masks.get(name), masks.get(name)
        if a is not None and b is not None:
            if a.shape != b.shape:
                continue
            intersection += int((a & b).sum())
            union += int((a | b).sum())
        else:
            union += int((a if a is not None else b).sum())
        compared = True
    if not compared:
        return math.nan
    return intersection / union if union else 1.0


def _check_sparsity(value: float, label: str = "sparsity") -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{label} must be in [0, 1), got {value}")
