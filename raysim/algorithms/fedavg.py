"""FedAvg (McMahan et al. 2017): sample-weighted mean of client deltas.

FedAvg never creates a mask, but it honours one a broadcast carries (a pruning layer
such as autoflip's PrunedFedAvg puts it there): the download is billed with the mask
and any architecture record, clients train under the mask and upload only kept
entries, and the server averages what went over the wire.
"""
from __future__ import annotations

import json

import numpy as np
from pydantic import BaseModel, ConfigDict
from torch import nn

from raysim.algorithms.server_update import apply_server_update, is_trainable_state
from raysim.config import ExperimentConfig
from raysim.costs.payload import ReusedBufferEncoder, decode, encode_masked, wire_values
from raysim.engine.api import (
    Broadcast,
    ClientData,
    ClientTask,
    ClientUpdate,
    FederatedAlgorithm,
    RoundPlan,
    ServerState,
)
from raysim.engine.seeds import derive_seeds
from raysim.engine.stats import Partial, Tensors, WeightedSum
from raysim.engine.training import TrainResult, local_train
from raysim.engine.vectorized import train_together


class AlgorithmParams(BaseModel):
    """Base of an algorithm's `Params`: unknown fields and non-finite numbers are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class FedAvg(FederatedAlgorithm):
    name = "fedavg"

    Params: type[AlgorithmParams] | None = None  # an algorithm's own parameters (algorithm.params)

    def __init__(self, cfg: ExperimentConfig, model_factory=None, example_input=None):
        # The factory contract passes the model builder and an example input; FedAvg needs neither.
        self.cfg = cfg
        self.params = self.Params.model_validate(cfg.algorithm.params) if self.Params else None

    def init_state(self, weights: Tensors) -> ServerState:
        return ServerState(round=0, weights={k: v.clone() for k, v in weights.items()})

    def broadcast(self, state: ServerState) -> Broadcast:
        return Broadcast(weights=state.weights)

    def encode(self, tensors: Tensors, masks: Tensors, include_mask: bool) -> bytes:
        p = self.cfg.payload
        return encode_masked(tensors, masks, p.compression, p.zstd_level, include_mask=include_mask)

    def download_bytes(self, broadcast: Broadcast) -> int:
        """Clients are stateless: each download carries the mask and, for a pruned
        architecture, its replay record."""
        arch = len(json.dumps(broadcast.arch).encode()) if broadcast.arch is not None else 0
        return len(self.encode(broadcast.weights, broadcast.masks, include_mask=True)) + arch

    def configure_round(self, state: ServerState, round_idx: int, clients: list[int]) -> RoundPlan:
        broadcast = self.broadcast(state)
        broadcast.payload_bytes = self.download_bytes(broadcast)
        c = self.cfg.clients
        lr = c.optimizer.lr * c.lr_decay**round_idx
        # derive_seed(seed, "client", round, k) for every client, hashed as one array.
        seeds = derive_seeds(self.cfg.seed, "client", (round_idx,), np.asarray(clients, dtype=np.int64)).tolist()
        tasks = [ClientTask(round_idx, k, s, "train", lr, c.local_epochs) for k, s in zip(clients, seeds, strict=True)]
        return RoundPlan(round_idx, tasks, broadcast)

    def client_update(self, model: nn.Module, data: ClientData, task: ClientTask, broadcast: Broadcast) -> ClientUpdate:
        return self._train_and_upload(model, data, task, broadcast)

    def _train_and_upload(self, model: nn.Module, data: ClientData, task: ClientTask, broadcast: Broadcast,
                          extra_loss=None, after_step=None, own_masks: Tensors | None = None) -> ClientUpdate:
        """Local training (with the subclass's hooks, if any: see local_train) and the masked
        upload of the change. With `own_masks` (a mask the client chose itself) the client trains
        under it and sends it along, since the server does not know it; else it uses the broadcast's."""
        c = self.cfg.clients
        masks = broadcast.masks if own_masks is None else own_masks
        result = local_train(
            model, data, epochs=task.epochs, batch_size=c.batch_size, optimizer=c.optimizer, lr=task.lr,
            seed=task.seed, masks=masks, extra_loss=extra_loss, after_step=after_step,
        )
        return self._upload(model.state_dict(), data, broadcast, masks, own_masks is not None, result)

    def _upload(self, trained: Tensors, data: ClientData, broadcast: Broadcast, masks: Tensors, send_mask: bool,
                result: TrainResult) -> ClientUpdate:
        """The client's change, encoded as it goes up (kept values only, with the mask where the
        server does not hold it), and aggregated as the server receives it."""
        delta = {k: trained[k] - w for k, w in broadcast.weights.items() if is_trainable_state(w)}
        if masks:  # the server decodes what a mask shaped
            payload = self.encode(delta, masks, include_mask=send_mask)
            received, upload_bytes = decode(payload, None if send_mask else masks), len(payload)
        else:  # an unmasked payload carries the values as they are
            received, upload_bytes = wire_values(delta), self._encoded_length(delta)
        contribution = {"delta": WeightedSum.lazy(received, len(data))}
        return ClientUpdate(contribution, upload_bytes, len(data), result.examples_processed, result.epoch_losses[-1])

    def _encoded_length(self, delta: Tensors) -> int:
        """len(self.encode(delta, {}, False)); uncompressed by FedAvg's own encoder, written into a
        reused buffer (raysim/costs/payload.py), else encoded in full."""
        if type(self).encode is not FedAvg.encode or self.cfg.payload.compression != "none":
            return len(self.encode(delta, {}, include_mask=False))
        if getattr(self, "_upload_encoder", None) is None:  # built where clients run, on first use
            self._upload_encoder = ReusedBufferEncoder()
        return self._upload_encoder.length(delta, {}, include_mask=False)

    def client_updates(self, model: nn.Module, datas: list[ClientData], tasks: list[ClientTask],
                       broadcast: Broadcast) -> list[ClientUpdate] | None:
        """Plain FedAvg clients train as one vectorised computation (raysim/engine/vectorized.py);
        a subclass that changes local training (FedProx's term, SCAFFOLD's correction) or a
        broadcast with masks does not, and its clients train one at a time."""
        if getattr(self.client_update, "__func__", None) is not FedAvg.client_update or broadcast.masks:
            return None
        c = self.cfg.clients
        trained = train_together(model, broadcast.weights, datas, [t.seed for t in tasks], epochs=tasks[0].epochs,
                                 batch_size=c.batch_size, optimizer=c.optimizer, lr=tasks[0].lr)
        return [self._upload(broadcast.weights | params, data, broadcast, {}, False, result)
                for data, (params, result) in zip(datas, trained, strict=True)]

    def aggregate(self, state: ServerState, plan: RoundPlan, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        if "delta" in partial.stats:  # else every client failed or was dropped: keep the model
            a = self.cfg.algorithm
            weights, buffers = apply_server_update(
                state.weights, state.buffers, partial.stats["delta"].mean(), a.server_lr, a.server_momentum
            )
            state = ServerState(state.round, weights, buffers, state.meta)
        state = ServerState(state.round + 1, state.weights, state.buffers, state.meta)
        return self.after_aggregate(state, partial)

    def after_aggregate(self, state: ServerState, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        """A subclass's step after the server update, on the new state (pruning methods choose the
        next round's mask here); returns the state and the round's metrics. FedAvg adds none."""
        return state, {}
