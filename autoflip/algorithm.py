"""AutoFLIP: federated loss exploration, then hybrid structured + unstructured
pruning with a mask that adapts every round (docs/method.md).

Choices the method text leaves open, made explicit:
- Structured removal happens once, from the exploration guidance; later rounds
  adapt the unstructured mask only (structured removal is monotone).
- The running guidance covers the prunable weights; each round's fresh guidance
  is normalised over the coordinates that survived the round (pruned ones score 0).
- Regrown coordinates restart at 0 (they were 0 while pruned).
- The exploration starts from the same initial weights every method gets, and
  its cost is logged as round 0 so reports can show it or leave it out. With
  `warm_start`, round 1 starts from the explorers' sample-weighted mean weights
  (their change is uploaded and billed too).
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from autoflip.growth import PrunedGradientProbe, drop_and_grow, drop_fraction, top_k_signal
from autoflip.guidance import guidance_from_sum, normalise, update_running
from autoflip.masks import sparsity_schedule, unstructured_mask
from autoflip.pruned import PrunedFedAvg, state_masks, with_masks
from autoflip.structured import remove_weakest_units, slice_state
from autoflip.variants import VARIANTS
from raysim.algorithms.server_update import is_trainable_state
from raysim.costs.payload import decode
from raysim.engine.api import Broadcast, ClientData, ClientTask, ClientUpdate, RoundPlan, ServerState
from raysim.engine.seeds import derive_seed, rng_for
from raysim.engine.stats import Partial, Tensors, WeightedSum
from raysim.engine.training import local_train

GUIDANCE_PREFIX = "guidance/"



GROW_SIGNAL_BYTES = "grow_signal_bytes"


def with_squared_deviations(update: ClientUpdate) -> ClientUpdate:
    """The update plus its squared deviations, what adaptation sums: the square of the
    decoded change the worker already holds (its weighted sum's mean gives it back exactly)."""
    delta = update.contribution["delta"]
    sq_dev = WeightedSum.of({k: v * v for k, v in delta.mean().items()}, delta.weight)
    return replace(update, contribution=dict(update.contribution, sq_dev=sq_dev))


def explorer_ids(seed: int, explore_fraction: float, population: int) -> list[int]:
    """The clients that explore: a seeded draw, the same for every variant of one seed."""
    count = max(1, round(explore_fraction * population))
    return sorted(int(k) for k in rng_for(seed, "algorithm", 0).choice(population, count, replace=False))


class AutoFLIP(PrunedFedAvg):
    explorer_ids = staticmethod(explorer_ids)  # what the benchmarks read, through the registry

    def __init__(self, cfg, model_factory, example_input):
        super().__init__(cfg, model_factory, example_input)
        self.name = cfg.algorithm.name
        self.structured, self.unstructured, self.adaptive = VARIANTS[self.name]

    # -- exploration ---------------------------------------------------------
    def setup_plan(self, state: ServerState, population: int) -> RoundPlan | None:
        if state.meta.get("explored"):
            return None
        p, seed = self.pruning, self.cfg.seed
        explorers = explorer_ids(seed, p.explore_fraction, population)
        broadcast = self.broadcast(state)
        broadcast.payload_bytes = self.download_bytes(broadcast)
        lr = self.cfg.clients.optimizer.lr
        tasks = [ClientTask(0, k, derive_seed(seed, "algorithm", 1, k), "explore", lr, p.explore_epochs) for k in explorers]
        return RoundPlan(0, tasks, broadcast)

    def client_update(self, model: nn.Module, data: ClientData, task: ClientTask, broadcast: Broadcast) -> ClientUpdate:
        if task.kind != "explore":
            probe = None
            if self.pruning.growth == "gradient" and self._adjusts(task.round + 1) and broadcast.masks:
                probe = PrunedGradientProbe(model, broadcast.masks)
            try:
                update = with_squared_deviations(super().client_update(model, data, task, broadcast))
            finally:
                if probe is not None:
                    probe.close()
            if probe is not None:
                update = self._upload_growth_signal(update, probe, broadcast)
            if self.pruning.secure_aggregation and self.adaptive and self.unstructured:
                update = self._upload_deviations(update, broadcast)
            return update
        c = self.cfg.clients
        result = local_train(
            model, data, epochs=task.epochs, batch_size=c.batch_size, optimizer=c.optimizer, lr=task.lr,
            seed=task.seed, patience=self.pruning.explore_patience,
        )
        trained = model.state_dict()
        change = {k: trained[k] - w for k, w in broadcast.weights.items() if is_trainable_state(w)}
        # An explorer sends its squared deviations D_k; its weight change only for a warm start.
        uploads = {"sq_dev": {k: d * d for k, d in change.items()}}
        if self.pruning.warm_start:
            uploads["delta"] = change
        contribution, sent = {}, 0
        for stat, tensors in uploads.items():
            payload = self.encode(tensors, {}, include_mask=True)
            contribution[stat] = WeightedSum.of(decode(payload), len(data))
            sent += len(payload)
        return ClientUpdate(contribution, sent, len(data), result.examples_processed, result.epoch_losses[-1])

    def _upload_growth_signal(self, update: ClientUpdate, probe: PrunedGradientProbe, broadcast: Broadcast) -> ClientUpdate:
        """The largest summed gradients of pruned weights, sent sparse (values plus their
        positions, as a bitmap or indices, whichever is smaller) and billed."""
        values, sent = top_k_signal(probe.sums, broadcast.masks, self.pruning.grow_topk)
        payload = self.encode(values, sent, include_mask=True)
        grow = WeightedSum.of(decode(payload), update.num_samples)
        return replace(update, contribution=dict(update.contribution, grow=grow),
                       upload_bytes=update.upload_bytes + len(payload),
                       metrics=update.metrics | {GROW_SIGNAL_BYTES: len(payload)})

    def _upload_deviations(self, update: ClientUpdate, broadcast: Broadcast) -> ClientUpdate:
        """Under secure aggregation the server never sees one client's update, so it cannot
        square it: the client uploads its squared deviations (kept entries, as the delta)."""
        stat = update.contribution["sq_dev"]
        payload = self.encode(stat.mean(), broadcast.masks, include_mask=False)
        received = WeightedSum.of(decode(payload, broadcast.masks), stat.weight)
        return replace(update, contribution=dict(update.contribution, sq_dev=received),
                       upload_bytes=update.upload_bytes + len(payload))

    def finish_setup(self, state: ServerState, plan: RoundPlan, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        if "sq_dev" not in partial.stats:
            raise RuntimeError(f"AutoFLIP exploration: all {len(plan.tasks)} explorers failed; see failures.jsonl")
        guidance = guidance_from_sum(partial.stats["sq_dev"], self.pruning.normalise)
        weights, meta = state.weights, dict(state.meta, explored=True)
        if self.pruning.warm_start:  # the explorers trained: start from where they went, on average
            mean_change = partial.stats["delta"].mean()
            weights = {k: w + mean_change[k] if k in mean_change else w for k, w in weights.items()}
        if self.structured and self.pruning.structured_fraction > 0:
            model = self.model_factory(None)
            model.load_state_dict(weights)
            change = remove_weakest_units(model, guidance, self.pruning.structured_fraction, self.example_input)
            weights, guidance = slice_state(weights, change.keep), slice_state(guidance, change.keep)
            meta["arch"] = change.record
        names = self.prunable_names(meta.get("arch"))
        state = ServerState(state.round, weights, state.buffers, meta).with_group(GUIDANCE_PREFIX, {n: guidance[n] for n in names})
        # A static mask never adapts, so it starts at the target sparsity; an adaptive one ramps.
        first = 0 if self.adaptive else self.pruning.ramp_rounds
        state = with_masks(state, self._binarise(state.group(GUIDANCE_PREFIX), None, first))
        return state, self.metrics(state, None)

    # -- adaptive masks ------------------------------------------------------
    def _binarise(self, guidance: Tensors, previous: Tensors | None, round_idx: int) -> Tensors:
        p = self.pruning
        if not self.unstructured:
            return {}
        scores = dict(guidance)
        if previous and p.regrowth == "freeze":  # pruned stays pruned, and the count stays exact
            scores = {k: v.masked_fill(~previous[k], float("-inf")) for k, v in scores.items()}
        sparsity = sparsity_schedule(round_idx, p.sparsity, p.ramp_rounds)
        return unstructured_mask(scores, sparsity, p.allocation, p.threshold)

    def _fresh_guidance(self, stat: WeightedSum, masks: Tensors, names: list[str]) -> Tensors:
        """This round's squared update deviations, normalised over the surviving coordinates."""
        mean = stat.mean()
        fresh = {}
        for name in names:
            kept = masks[name] if name in masks else torch.ones_like(mean[name], dtype=torch.bool)
            out = torch.zeros_like(mean[name])
            out[kept] = normalise({name: mean[name][kept]}, self.pruning.normalise)[name]
            fresh[name] = out
        return fresh

    def after_aggregate(self, state: ServerState, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        previous = state_masks(state)
        if not (self.adaptive and self.unstructured) or "sq_dev" not in partial.stats:
            return state, self.metrics(state, previous)
        names = self.prunable_names(state.meta.get("arch"))
        fresh = self._fresh_guidance(partial.stats["sq_dev"], previous, names)
        guidance = update_running(state.group(GUIDANCE_PREFIX), fresh, self.pruning.alpha)
        if self.pruning.growth == "none" or state.round <= self.pruning.ramp_rounds:
            state = with_masks(state.with_group(GUIDANCE_PREFIX, guidance), self._binarise(guidance, previous, state.round))
            return state, self.metrics(state, previous)
        masks, grown, fraction = previous, {k: torch.zeros_like(m) for k, m in previous.items()}, 0.0
        if self._adjusts(state.round):
            p = self.pruning
            fraction = drop_fraction(state.round - p.ramp_rounds - 1, p.drop_fraction, p.anneal_rounds)
            masks, grown = drop_and_grow(previous, guidance, self._grow_scores(partial, previous, state.round), fraction)
            # A grown weight starts at exactly 0 (it was pruned) with the mean guidance of its
            # tensor's previously kept weights, so the next round's drop does not take it straight back.
            guidance = {k: torch.where(grown[k], g[previous[k]].mean(), g) for k, g in guidance.items()}
        state = with_masks(state.with_group(GUIDANCE_PREFIX, guidance), masks)
        kept = sum(int(m.sum()) for m in masks.values())
        return state, self.metrics(state, previous) | {
            "grown_fraction": sum(int(g.sum()) for g in grown.values()) / kept,
            "drop_fraction": fraction,
            GROW_SIGNAL_BYTES: partial.metrics.get(GROW_SIGNAL_BYTES, 0.0)}  # absent: no client uploaded one

    def _adjusts(self, rounds_done: int) -> bool:
        """Whether the mask chosen after `rounds_done` rounds drops and grows (the ramp is over
        and the annealed fraction is not yet 0)."""
        p = self.pruning
        return (self.adaptive and self.unstructured and p.growth != "none" and rounds_done > p.ramp_rounds
                and drop_fraction(rounds_done - p.ramp_rounds - 1, p.drop_fraction, p.anneal_rounds) > 0)

    def _grow_scores(self, partial: Partial, masks: Tensors, rounds_done: int) -> Tensors:
        if self.pruning.growth == "random":
            gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "algorithm", 4, rounds_done))
            return {k: torch.rand(m.shape, generator=gen) for k, m in masks.items()}
        if "grow" not in partial.stats:  # every client failed or was dropped: nothing to grow
            return {k: torch.zeros(m.shape) for k, m in masks.items()}
        return partial.stats["grow"].mean()
