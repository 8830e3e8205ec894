"""FedAvg (McMahan et al. 2017): sample-weighted mean of dense client deltas."""
from __future__ import annotations

from torch import nn

from raysim.algorithms.server_update import apply_server_update, is_trainable_state
from raysim.config import ExperimentConfig
from raysim.costs.payload import decode, encode_dense
from raysim.engine.api import Broadcast, ClientData, ClientTask, ClientUpdate, FederatedAlgorithm, RoundPlan, ServerState
from raysim.engine.seeds import derive_seed
from raysim.engine.stats import Partial, Tensors, WeightedSum
from raysim.engine.training import local_train


class FedAvg(FederatedAlgorithm):
    name = "fedavg"

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    def init_state(self, weights: Tensors) -> ServerState:
        return ServerState(round=0, weights={k: v.clone() for k, v in weights.items()})

    def encode(self, tensors: Tensors) -> bytes:
        return encode_dense(tensors, self.cfg.payload.compression, self.cfg.payload.zstd_level)

    def configure_round(self, state: ServerState, round_idx: int, clients: list[int]) -> RoundPlan:
        broadcast = self.broadcast(state)
        broadcast.payload_bytes = len(self.encode(broadcast.weights))
        c = self.cfg.clients
        lr = c.optimizer.lr * c.lr_decay**round_idx
        tasks = [
            ClientTask(round_idx, k, derive_seed(self.cfg.seed, "client", round_idx, k), "train", lr, c.local_epochs)
            for k in clients
        ]
        return RoundPlan(round_idx, tasks, broadcast)

    def client_update(self, model: nn.Module, data: ClientData, task: ClientTask, broadcast: Broadcast) -> ClientUpdate:
        c = self.cfg.clients
        result = local_train(
            model, data, epochs=task.epochs, batch_size=c.batch_size, optimizer=c.optimizer, lr=task.lr,
            seed=task.seed, masks=broadcast.masks,
        )
        state = model.state_dict()
        delta = {k: state[k] - w for k, w in broadcast.weights.items() if is_trainable_state(w)}
        payload = self.encode(delta)
        # Aggregate what went over the wire, not the in-memory tensors.
        received = decode(payload)
        return ClientUpdate(
            contribution={"delta": WeightedSum.of(received, len(data))},
            upload_bytes=len(payload),
            num_samples=len(data),
            examples_processed=result.examples_processed,
            train_loss=result.epoch_losses[-1],
        )

    def aggregate(self, state: ServerState, plan: RoundPlan, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        if "delta" not in partial.stats:  # every client failed or was dropped: keep the model
            return ServerState(state.round + 1, state.weights, state.buffers, state.meta), {}
        a = self.cfg.algorithm
        weights, buffers = apply_server_update(
            state.weights, state.buffers, partial.stats["delta"].mean(), a.server_lr, a.server_momentum
        )
        return ServerState(state.round + 1, weights, buffers, state.meta), {}
