"""PruneFL (Jiang et al., "Model Pruning Enables Efficient Federated Learning on Edge
Devices"), in the same engine as AutoFLIP, at a density matched to it.

- Initial pruning: the server keeps the largest |w| of the initial weights at the
  target sparsity (the paper prunes at one strong client after a few local steps;
  the server-side magnitude step stands in for it and needs no client data).
- Adaptive pruning: every `adjust_every` rounds the clients of the round sum the
  squared gradient of every prunable entry, kept or pruned (the dense kernels
  compute it before the mask zeroes it), and upload it dense, billed. The server
  keeps the entries of highest mean importance.
- Departure, stated: the paper picks the kept set that maximises importance per
  unit of estimated time, so its density drifts; here the count is held at the
  configured sparsity so that PruneFL trains as many weights as the method it is
  compared with. Unstructured only: no units are removed.
"""
from __future__ import annotations

from dataclasses import replace

from torch import nn

from autoflip.growth import SquaredGradientProbe
from autoflip.masks import magnitude_mask, unstructured_mask
from autoflip.pruned import PrunedFedAvg, state_masks, with_masks
from raysim.costs.payload import decode
from raysim.engine.api import Broadcast, ClientData, ClientTask, ClientUpdate, ServerState
from raysim.engine.stats import Partial, Tensors, WeightedSum


def readjusts(rounds_done: int, every: int) -> bool:
    """Whether the mask chosen after `rounds_done` rounds is a readjustment."""
    return rounds_done > 0 and rounds_done % every == 0


class PruneFL(PrunedFedAvg):
    name = "prunefl"

    def init_state(self, weights: Tensors) -> ServerState:
        p = self.pruning
        prunable = {n: weights[n] for n in self.prunable_names(None)}
        return with_masks(super().init_state(weights), magnitude_mask(prunable, p.sparsity, p.allocation, p.threshold))

    def client_update(self, model: nn.Module, data: ClientData, task: ClientTask, broadcast: Broadcast) -> ClientUpdate:
        if not readjusts(task.round + 1, self.pruning.adjust_every):
            return super().client_update(model, data, task, broadcast)
        probe = SquaredGradientProbe(model, list(broadcast.masks))
        try:
            update = super().client_update(model, data, task, broadcast)
        finally:
            probe.close()
        payload = self.encode(probe.sums, {}, include_mask=False)  # dense: pruned entries must score too
        importance = WeightedSum.of(decode(payload), update.num_samples)
        return replace(update, contribution=dict(update.contribution, importance=importance),
                       upload_bytes=update.upload_bytes + len(payload))

    def after_aggregate(self, state: ServerState, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        previous = state_masks(state)
        if "importance" in partial.stats:  # a readjustment round (and not every client failed)
            p = self.pruning
            state = with_masks(state, unstructured_mask(partial.stats["importance"].mean(), p.sparsity, p.allocation,
                                                        p.threshold))
        return state, self.metrics(state, previous)
