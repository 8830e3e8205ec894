"""FedDST-style dynamic sparse training (after Bibikar et al., "Federated Dynamic
Sparse Training"), at a density matched to the method it is compared with.

- The server starts from a random mask at the target sparsity, the same in every
  prunable tensor.
- Every `adjust_every` rounds each client readjusts its own mask before training
  (RigL on the client): from one batch's dense gradient it drops the smallest |w|
  among its kept entries and grows as many pruned entries with the largest
  |gradient|, `drop_fraction` of the kept count annealed to 0 over `anneal_rounds`
  rounds (cosine). It trains under its new mask and uploads its values and its
  mask (billed).
- The server averages each entry over the clients that kept it (sample-weighted),
  then keeps, per tensor, the same count of entries with the largest aggregated
  |w| among those at least one client kept: the mask aggregation.
- Simplified, stated: one readjustment per adjustment round, at the start of local
  training (the paper readjusts part-way through local epochs).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from autoflip.growth import drop_and_grow, drop_fraction
from autoflip.masks import random_mask
from autoflip.pruned import PrunedFedAvg, state_masks, with_masks
from autoflip.prunefl import readjusts
from raysim.engine.api import Broadcast, ClientData, ClientTask, ClientUpdate, RoundPlan, ServerState
from raysim.engine.seeds import derive_seed
from raysim.engine.stats import Partial, Tensors, WeightedSum
from raysim.engine.training import apply_masks

VOTE = "mask_vote"


class FedDST(PrunedFedAvg):
    name = "feddst"

    def init_state(self, weights: Tensors) -> ServerState:
        names = self.prunable_names(None)
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "algorithm", 5))
        masks = random_mask(weights, {n: self.pruning.sparsity for n in names}, gen)
        return with_masks(super().init_state(weights), masks)

    def _fraction(self, rounds_done: int) -> float:
        p = self.pruning
        return drop_fraction(rounds_done - 1, p.drop_fraction, p.anneal_rounds)

    def client_update(self, model: nn.Module, data: ClientData, task: ClientTask, broadcast: Broadcast) -> ClientUpdate:
        fraction = self._fraction(task.round + 1)
        if not (readjusts(task.round + 1, self.pruning.adjust_every) and fraction > 0):
            return super().client_update(model, data, task, broadcast)
        masks, probe_examples = self._readjust(model, data, task, broadcast.masks, fraction)
        apply_masks(model, masks)  # dropped entries leave the client's model
        update = self._train_and_upload(model, data, task, broadcast, own_masks=masks)
        votes = WeightedSum.of({n: m.float() for n, m in masks.items()}, len(data))
        return replace(update, contribution=dict(update.contribution, **{VOTE: votes}),
                       examples_processed=update.examples_processed + probe_examples)

    def _readjust(self, model: nn.Module, data: ClientData, task: ClientTask, masks: Tensors,
                  fraction: float) -> tuple[Tensors, int]:
        """The client's new mask from one batch's dense gradient; and the examples that batch cost."""
        gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "client", task.round, task.client, 1))
        idx = torch.randperm(len(data), generator=gen)[: self.cfg.clients.batch_size]
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        params = dict(model.named_parameters())
        keep = {n: params[n].detach().abs() for n in masks}
        grow = {n: params[n].grad.abs() * ~m.to(params[n].device) for n, m in masks.items()}
        model.zero_grad(set_to_none=True)
        new, _ = drop_and_grow({n: m.to(params[n].device) for n, m in masks.items()}, keep, grow, fraction)
        return {n: m.cpu() for n, m in new.items()}, len(idx)

    def aggregate(self, state: ServerState, plan: RoundPlan, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        if VOTE in partial.stats:  # an adjustment round: average each entry over the clients that kept it
            delta, votes = partial.stats["delta"], partial.stats[VOTE]
            total = dict(delta.total)
            for name, vote in votes.total.items():
                total[name] = torch.where(vote > 0, delta.total[name] * delta.weight / vote.clamp_min(1e-300), 0.0)
            partial = replace(partial, stats=dict(partial.stats, delta=WeightedSum(total, delta.weight)))
        return super().aggregate(state, plan, partial)

    def after_aggregate(self, state: ServerState, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        previous = state_masks(state)
        if VOTE in partial.stats:
            votes = partial.stats[VOTE].total
            masks = {}
            for name, mask in previous.items():
                score = state.weights[name].abs().to(torch.float64).masked_fill(votes[name] <= 0, -1.0)
                flat = torch.zeros(mask.numel(), dtype=torch.bool)
                flat[torch.sort(score.reshape(-1), descending=True, stable=True).indices[: int(mask.sum())]] = True
                masks[name] = flat.reshape(mask.shape)
            state = with_masks(state, masks)
        return state, self.metrics(state, previous)
