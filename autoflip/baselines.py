"""The pruning baselines AutoFLIP is compared with, in the same engine."""
from __future__ import annotations

import torch

from autoflip.masks import magnitude_mask, random_mask, sparsity_schedule, unstructured_mask
from autoflip.pruned import PrunedFedAvg, state_masks, with_masks
from autoflip.structured import remove_weakest_units, slice_state
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

    def after_aggregate(self, state: ServerState, partial: Partial) -> tuple[ServerState, dict[str, float]]:
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

    def after_aggregate(self, state: ServerState, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        previous = state_masks(state)
        state = with_masks(state, self._masks(state.weights, state.round))
        return state, self.metrics(state, previous)


class HybridPruning(PrunedFedAvg):
    """AutoFLIP's pipeline with scores that are not guidance: the cost-matched control.

    One structured step at the start, removing `structured_fraction` of every prunable
    layer's units, then an unstructured mask on AutoFLIP's sparsity schedule
    (`ramp_rounds`), so the layer widths and the schedule are AutoFLIP's by construction;
    under `allocation: layer` so are the per-tensor densities (under `global` they follow
    each method's own scores). Only the choice of units and weights differs. No
    exploration runs: these controls need none, so they never pay for it."""

    def unit_guidance(self, state: ServerState) -> Tensors:
        """Per-parameter scores whose fan-in means rank the units (as AutoFLIP's guidance does)."""
        raise NotImplementedError

    def weight_scores(self, state: ServerState) -> Tensors:
        """Scores of the prunable weights at the state's architecture; the highest are kept."""
        raise NotImplementedError

    def init_state(self, weights: Tensors) -> ServerState:
        state = self.prepare(super().init_state(weights))
        if self.pruning.structured_fraction > 0:
            model = self.model_factory(None)
            model.load_state_dict(state.weights)
            change = remove_weakest_units(model, self.unit_guidance(state), self.pruning.structured_fraction,
                                          self.example_input)
            buffers = slice_state(state.buffers, {PREFIX + k: v for k, v in change.keep.items()})
            state = ServerState(state.round, slice_state(state.weights, change.keep), buffers,
                                dict(state.meta, arch=change.record))
        return with_masks(state, self._masks(state, 0))

    def prepare(self, state: ServerState) -> ServerState:
        """Anything the scores need kept in the state (resumable); nothing by default."""
        return state

    def _masks(self, state: ServerState, round_idx: int) -> Tensors:
        p = self.pruning
        sparsity = sparsity_schedule(round_idx, p.sparsity, p.ramp_rounds)
        return unstructured_mask(self.weight_scores(state), sparsity, p.allocation, p.threshold)

    def after_aggregate(self, state: ServerState, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        previous = state_masks(state)
        state = with_masks(state, self._masks(state, state.round))
        return state, self.metrics(state, previous)


PREFIX = "hybrid_score/"


class HybridRandom(HybridPruning):
    """Units and weights chosen at random: one uniform score per coordinate, drawn once and
    kept, so that as the sparsity ramps each mask holds the previous one (as AutoFLIP's do)."""

    name = "hybrid_random"

    def prepare(self, state: ServerState) -> ServerState:
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "algorithm", 3))
        scores = {k: torch.rand(v.shape, generator=gen) for k, v in state.weights.items() if v.is_floating_point()}
        return state.with_group(PREFIX, scores)

    def unit_guidance(self, state: ServerState) -> Tensors:
        return state.group(PREFIX)

    def weight_scores(self, state: ServerState) -> Tensors:
        scores = state.group(PREFIX)
        return {n: scores[n] for n in self.prunable_names(state.meta.get("arch"))}


class HybridMagnitude(HybridPruning):
    """Units with the smallest L2 norm of their fan-in removed (the mean of squared weights
    over the fan-in ranks units as the norm does); then the smallest |w| pruned, re-chosen
    every round from the current weights on the schedule."""

    name = "hybrid_magnitude"

    def unit_guidance(self, state: ServerState) -> Tensors:
        return {k: v * v for k, v in state.weights.items() if v.is_floating_point()}

    def weight_scores(self, state: ServerState) -> Tensors:
        return {n: state.weights[n].abs() for n in self.prunable_names(state.meta.get("arch"))}
