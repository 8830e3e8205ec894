"""The pruning baselines AutoFLIP is compared with, in the same engine."""
from __future__ import annotations

import torch

from autoflip.masks import magnitude_mask, random_mask, sparsity_schedule
from autoflip.pruned import PrunedFedAvg
from raysim.algorithms.fedavg import state_masks, with_masks
from raysim.engine.api import ServerState
from raysim.engine.seeds import derive_seed
from raysim.engine.stats import Partial, Tensors


class RandomPruning(PrunedFedAvg):
    """A persistent random mask at the configured per-layer sparsity."""

    name = "random"

    def init_state(self, weights: Tensors) -> ServerState:
        names = self.prunable_names(None)
        per_layer = self.pruning.layer_sparsity or {n: self.pruning.sparsity for n in names}
        unknown = sorted(set(per_layer) - set(names))
        if unknown:
            raise ValueError(f"algorithm.pruning.layer_sparsity names {unknown}; prunable weights are {names}")
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "algorithm", 2))
        return with_masks(super().init_state(weights), random_mask(weights, per_layer, gen))

    def next_masks(self, state: ServerState, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        return state, self.metrics(state, state_masks(state))


class MagnitudePruning(PrunedFedAvg):
    """PruneFL-style server-side magnitude pruning, re-applied every round on the schedule."""

    name = "magnitude"

    def _masks(self, weights: Tensors, round_idx: int) -> Tensors:
        p = self.pruning
        sparsity = sparsity_schedule(round_idx, p.sparsity, p.ramp_rounds)
        return magnitude_mask({n: weights[n] for n in self.prunable_names(None)}, sparsity, p.allocation, p.threshold)

    def init_state(self, weights: Tensors) -> ServerState:
        return with_masks(super().init_state(weights), self._masks(weights, 0))

    def next_masks(self, state: ServerState, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        previous = state_masks(state)
        state = with_masks(state, self._masks(state.weights, state.round))
        return state, self.metrics(state, previous)
