"""Drop and grow at constant sparsity: how a pruned coordinate earns its way back.

A pruned coordinate gets no update, so the running guidance alone can never lift it
above a kept one. RigL's remedy, federated: while training, a client sums the
gradient its dense kernels compute for the pruned coordinates anyway (before the mask
zeroes it) and uploads the largest few as a sparse statistic, which sums like any
other. Each adjustment round the server drops the lowest-guidance kept coordinates
of every tensor and grows as many of the highest-scoring pruned ones, so the count
stays exact; the fraction moved anneals to 0 on a cosine (RigL's schedule). Random
scores instead of gradients give the SET-style control.
"""
from __future__ import annotations

import math

import torch
from torch import nn

Tensors = dict[str, torch.Tensor]


def drop_fraction(rounds_since_ramp: int, initial: float, anneal_rounds: int) -> float:
    """RigL's cosine decay: `initial` at the first adjustment, 0 from `anneal_rounds` on."""
    if rounds_since_ramp < 0 or rounds_since_ramp >= anneal_rounds:
        return 0.0
    return initial * (1 + math.cos(math.pi * rounds_since_ramp / anneal_rounds)) / 2


class GradientProbe:
    """Sums, over every local step, a function of each named parameter's gradient.

    A tensor hook sees the gradient as autograd produced it, before the training loop
    zeroes its masked entries, so this costs no extra backward pass."""

    def __init__(self, model: nn.Module, names: list[str]):
        params = dict(model.named_parameters())
        self.sums = {name: torch.zeros_like(params[name]) for name in names}
        self._handles = [params[name].register_hook(self._adder(name)) for name in names]

    def accumulate(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _adder(self, name: str):
        def add(grad: torch.Tensor) -> None:
            self.sums[name].add_(self.accumulate(name, grad.detach()))
        return add

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class PrunedGradientProbe(GradientProbe):
    """The summed gradient of each masked parameter's pruned entries (RigL's grow signal)."""

    def __init__(self, model: nn.Module, masks: Tensors):
        device = next(model.parameters()).device
        self._pruned = {name: ~mask.to(device) for name, mask in masks.items()}
        super().__init__(model, list(masks))

    def accumulate(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        return grad * self._pruned[name]


class SquaredGradientProbe(GradientProbe):
    """The summed squared gradient of every entry, pruned or kept (PruneFL's importance)."""

    def accumulate(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        return grad * grad


def top_k_signal(sums: Tensors, masks: Tensors, share_of_kept: float) -> tuple[Tensors, Tensors]:
    """The pruned entries with the largest |summed gradient|: per tensor at most
    ceil(share_of_kept * kept) of them (at least one where any is nonzero). Returns
    (their magnitudes as dense tensors, zeros elsewhere; the mask of which were sent)."""
    values, sent = {}, {}
    for name, total in sums.items():
        score = total.abs() * ~masks[name]
        k = min(math.ceil(share_of_kept * int(masks[name].sum())), int((score > 0).sum()))
        chosen = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
        if k > 0:
            chosen[torch.topk(score.reshape(-1), k).indices] = True
        chosen = chosen.reshape(score.shape)
        values[name], sent[name] = score * chosen, chosen
    return values, sent


def drop_and_grow(masks: Tensors, keep_scores: Tensors, grow_scores: Tensors, fraction: float) -> tuple[Tensors, Tensors]:
    """Per tensor, drop the floor(fraction * kept) lowest `keep_scores` among the kept
    entries and grow as many of the highest positive `grow_scores` among the pruned ones
    (fewer of both where fewer pruned entries score above 0). Returns (new masks, the
    grown entries); every tensor keeps its exact count."""
    new, grown = {}, {}
    for name, mask in masks.items():
        flat = mask.reshape(-1)
        candidates = (~flat) & (grow_scores[name].reshape(-1) > 0)
        count = min(math.floor(fraction * int(flat.sum())), int(candidates.sum()))
        out, grew = flat.clone(), torch.zeros_like(flat)
        if count > 0:
            drop_order = keep_scores[name].reshape(-1).masked_fill(~flat, float("inf"))
            out[torch.sort(drop_order, stable=True).indices[:count]] = False
            grow_order = grow_scores[name].reshape(-1).masked_fill(~candidates, float("-inf"))
            grew[torch.sort(grow_order, descending=True, stable=True).indices[:count]] = True
            out |= grew
        new[name], grown[name] = out.reshape(mask.shape), grew.reshape(mask.shape)
    return new, grown
