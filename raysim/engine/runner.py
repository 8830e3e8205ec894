"""Runs a group of client tasks and sums them into one Partial.

The same runner executes inside the in-process backend and inside every Ray
worker, so accounting (FLOPs, bytes, simulated time), deadline drops and
failure handling are identical whichever backend runs the clients.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from raysim.costs.flops import training_flop_profile
from raysim.data.federated import FederatedDataset
from raysim.devices import Population, client_time_s, misses_deadline
from raysim.engine.api import Broadcast, ClientData, ClientTask, FederatedAlgorithm
from raysim.engine.counters import add_metrics
from raysim.engine.stats import Partial, WeightedSum
from raysim.engine.training import evaluate

ModelFactory = Callable[[dict[str, Any] | None], nn.Module]


def layer_densities(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Weight density per layer (module name), from masks keyed by parameter name."""
    return {name.rpartition(".")[0]: float(mask.float().mean()) for name, mask in masks.items()}


def _on_cpu(s: WeightedSum) -> WeightedSum:
    """Partials travel between processes: keep them on the CPU whatever device trained."""
    return WeightedSum({k: v.cpu() for k, v in s.total.items()}, s.weight)


class ClientRunner:
    def __init__(
        self,
        algorithm: FederatedAlgorithm,
        dataset: FederatedDataset,
        population: Population,
        model_factory: ModelFactory,
        eval_batch_size: int = 1024,
        device: str = "cpu",
    ):
        self.algorithm = algorithm
        self.dataset = dataset
        self.population = population
        self.model_factory = model_factory
        self.eval_batch_size = eval_batch_size
        self.device = torch.device(device)
        self._models: dict[str, nn.Module] = {}
        self._device_broadcast: tuple[Broadcast, Broadcast] | None = None

    def model_for(self, broadcast: Broadcast) -> nn.Module:
        """The model for the broadcast's architecture (built once per architecture), loaded with its weights."""
        key = json.dumps(broadcast.arch, sort_keys=True)
        if key not in self._models:
            self._models[key] = self.model_factory(broadcast.arch).to(self.device)
        model = self._models[key]
        model.load_state_dict(broadcast.weights)
        return model

    def warm_up(self) -> None:
        """Pay a first client's one-off costs at start-up, not in round 1: the original model is
        built and its FLOPs counted (torch imports its dispatch machinery on first use, about
        a second). Best effort: whatever fails here, the first client meets and reports."""
        x = self.dataset.example_inputs(2).copy()  # a worker's dataset is read-only shared memory
        if len(x) == 0:
            return
        try:
            model = self._models.setdefault(json.dumps(None), self.model_factory(None).to(self.device))
            training_flop_profile(model, torch.from_numpy(x).to(self.device))
        except Exception:  # noqa: BLE001 - reported by the first client that trains, as before
            pass

    def _on_device(self, broadcast: Broadcast) -> Broadcast:
        """The broadcast with its tensors on this runner's device, copied once per broadcast."""
        if self.device.type == "cpu":
            return broadcast
        if self._device_broadcast is None or self._device_broadcast[0] is not broadcast:
            moved = Broadcast({k: v.to(self.device) for k, v in broadcast.weights.items()},
                              {k: v.to(self.device) for k, v in broadcast.masks.items()},
                              broadcast.arch, broadcast.payload_bytes)
            self._device_broadcast = (broadcast, moved)
        return self._device_broadcast[1]

    def _seed(self, seed: int) -> None:
        """The global RNGs a client's training may draw from (dropout, random init), seeded per
        client: the CPU's, and the CUDA device's when the runner trains there. Not
        torch.manual_seed, which also walks every accelerator backend and records a stack
        trace for each lazy one: a fifth of a small client's time on E1."""
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    def _client_data(self, rows: tuple) -> ClientData:
        """(x, y) from the dataset's client_train / client_holdout: the client's own copy."""
        x, y = rows
        return ClientData(torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device))

    def run(self, tasks: Sequence[ClientTask], broadcast: Broadcast, into: Partial | None = None) -> Partial:
        """Run `tasks` and sum them into `into` in place (a worker's running sum for the round),
        or into a new Partial; returns it."""
        partial = Partial() if into is None else into
        broadcast = self._on_device(broadcast)
        densities = layer_densities(broadcast.masks)
        for task in tasks:
            try:
                if task.kind == "evaluate":
                    self._evaluate(task, broadcast, partial)
                else:
                    self._train(task, broadcast, densities, partial)
            except Exception as exc:  # a failing client is data, not the end of the run
                partial.add_failure(task.round, task.client, task.kind, f"{type(exc).__name__}: {exc}")
        return partial

    def _evaluate(self, task: ClientTask, broadcast: Broadcast, partial: Partial) -> None:
        data = self._client_data(self.dataset.client_holdout(task.client))
        if len(data) == 0:
            return
        loss_sum, correct, n = evaluate(self.model_for(broadcast), data.x, data.y, self.eval_batch_size)
        c = partial.evaluate
        c.loss_sum += loss_sum
        c.correct += correct
        c.examples += n
        c.clients += 1

    def _train(self, task: ClientTask, broadcast: Broadcast, densities: dict[str, float], partial: Partial) -> None:
        data = self._client_data(self.dataset.client_train(task.client))
        if len(data) == 0:
            raise ValueError(f"client {task.client} has no training data")
        model = self.model_for(broadcast)
        # Measured on the architecture this client really runs (cached per architecture).
        flops = training_flop_profile(model, data.x[:2])
        self._seed(task.seed)
        start = time.perf_counter()
        update = self.algorithm.client_update(model, data, task, broadcast)
        train_wall_s = time.perf_counter() - start
        if not math.isfinite(update.train_loss) or not all(s.is_finite() for s in update.contribution.values()):
            raise FloatingPointError(f"client {task.client} returned a non-finite update (loss {update.train_loss})")

        executed = flops.total * update.examples_processed
        effective = flops.effective(densities) * update.examples_processed
        clock = client_time_s(self.population.profile(task.client), executed, broadcast.payload_bytes, update.upload_bytes)
        c = partial.counters(task.kind)
        # Resources spent count whether or not the server waits for the client.
        c.flops_executed += executed
        c.flops_effective += effective
        c.bytes_down += broadcast.payload_bytes
        c.bytes_up += update.upload_bytes
        c.examples += update.examples_processed
        c.train_wall_s += train_wall_s
        if misses_deadline(clock.total_s, task.deadline_s):
            c.dropped += 1
            return
        partial.add_stats({k: _on_cpu(v) for k, v in update.contribution.items()})
        if update.client_state is not None:
            partial.client_states[task.client] = {k: v.detach().cpu() for k, v in update.client_state.items()}
        c.done += 1
        c.samples += update.num_samples
        c.loss_sum += update.train_loss * update.num_samples
        add_metrics(partial.metrics, update.metrics)
        c.sim_time_s = max(c.sim_time_s, clock.total_s)
