"""The contract between the round loop, the algorithms and the backends.

Server state goes in and comes out explicitly: nothing hides on the algorithm
object, which is what lets a checkpoint capture a run completely.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from raysim.engine.stats import Partial, Tensors, WeightedSum

TaskKind = Literal["train", "explore", "evaluate"]


@dataclass
class ServerState:
    round: int  # rounds completed
    weights: Tensors  # the global model's state_dict
    buffers: Tensors = field(default_factory=dict)  # algorithm tensors: server momentum, masks, guidance
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-able: architecture record, schedule position

    def group(self, prefix: str) -> Tensors:
        """The buffers stored under `prefix` (e.g. "mask/"), keyed without it."""
        return {k.removeprefix(prefix): v for k, v in self.buffers.items() if k.startswith(prefix)}

    def with_group(self, prefix: str, tensors: Tensors) -> "ServerState":
        """A copy whose buffers under `prefix` are replaced by `tensors`."""
        buffers = {k: v for k, v in self.buffers.items() if not k.startswith(prefix)}
        buffers |= {prefix + k: v for k, v in tensors.items()}
        return ServerState(self.round, self.weights, buffers, self.meta)


@dataclass(frozen=True)
class ClientTask:
    round: int
    client: int
    seed: int
    kind: TaskKind = "train"
    lr: float = 0.0
    epochs: int = 1
    deadline_s: float | None = None  # simulated seconds; a training client finishing later is dropped
    # The client's own state from the server's per-client store (SCAFFOLD's control variate);
    # None for algorithms without one. Left out of equality and hashing.
    state: dict | None = field(default=None, compare=False, hash=False)


@dataclass
class Broadcast:
    """What every client of a round downloads; built once per round, shared by reference."""

    weights: Tensors
    masks: Tensors = field(default_factory=dict)  # bool, by parameter name; absent = dense
    arch: dict[str, Any] | None = None  # replayable structure record; None = the original model
    payload_bytes: int = 0  # length of the real encoded download


@dataclass
class RoundPlan:
    round: int
    tasks: list[ClientTask]
    broadcast: Broadcast


@dataclass(frozen=True)
class ClientData:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class ClientUpdate:
    """A client's reply, already decoded from what it really uploaded."""

    contribution: dict[str, WeightedSum]
    upload_bytes: int
    num_samples: int
    examples_processed: int  # training examples run forward+backward (epochs x samples)
    train_loss: float  # mean over the last epoch
    metrics: dict[str, float] = field(default_factory=dict)  # summed across clients
    client_state: dict | None = None  # the client's new state for the per-client store, if it keeps one


class FederatedAlgorithm(ABC):
    """Server half (configure_round, aggregate) runs in the driver; client half
    (client_update) runs wherever the backend puts it and must be pure."""

    name: str = "abstract"

    @staticmethod
    def rebuild_model(model: nn.Module, arch: Any, example_input: torch.Tensor) -> nn.Module:
        """The model-builder hook: turn a freshly built original `model` into the
        architecture `arch`, a record this algorithm put in `Broadcast.arch` (e.g. units
        removed by structured pruning). Every worker calls it to build what the server
        trains; the default knows no records."""
        raise ValueError(f"architecture record {arch!r}: this algorithm cannot rebuild models from records")

    @abstractmethod
    def init_state(self, weights: Tensors) -> ServerState: ...

    def broadcast(self, state: ServerState) -> Broadcast:
        """What clients download for `state`; algorithms with masks or a smaller
        architecture extend it."""
        return Broadcast(weights=state.weights)

    def setup_plan(self, state: ServerState, population: int) -> RoundPlan | None:
        """Tasks to run once before round 1 (None: no set-up phase, or already done)."""
        return None

    def finish_setup(self, state: ServerState, plan: RoundPlan, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        raise NotImplementedError(f"{type(self).__name__} planned a set-up phase but cannot finish it")

    @abstractmethod
    def configure_round(self, state: ServerState, round_idx: int, clients: list[int]) -> RoundPlan: ...

    @abstractmethod
    def client_update(self, model: nn.Module, data: ClientData, task: ClientTask, broadcast: Broadcast) -> ClientUpdate: ...

    def client_updates(self, model: nn.Module, datas: list[ClientData], tasks: list[ClientTask],
                       broadcast: Broadcast) -> list[ClientUpdate] | None:
        """Optional, used with backend.vectorize: the updates of several clients of one task kind,
        epochs and learning rate at once, each equal to its client_update within float tolerance.
        None (the default) means this algorithm cannot, and the runner calls client_update for
        each; raise raysim.engine.vectorized.NotVectorizable for a model or data it cannot batch."""
        return None

    @abstractmethod
    def aggregate(self, state: ServerState, plan: RoundPlan, partial: Partial) -> tuple[ServerState, dict[str, float]]: ...
