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

from raysim.costs.flops import FlopProfile, training_flop_profile
from raysim.data.federated import FederatedDataset
from raysim.devices import Population, client_time_s, misses_deadline
from raysim.engine.api import Broadcast, ClientData, ClientTask, ClientUpdate, FederatedAlgorithm
from raysim.engine.counters import add_metrics
from raysim.engine.stats import Partial
from raysim.engine.training import evaluate
from raysim.engine.vectorized import NotVectorizable

ModelFactory = Callable[[dict[str, Any] | None], nn.Module]


def layer_densities(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Weight density per layer (module name), from masks keyed by parameter name."""
    return {name.rpartition(".")[0]: float(mask.float().mean()) for name, mask in masks.items()}


class ClientRunner:
    def __init__(
        self,
        algorithm: FederatedAlgorithm,
        dataset: FederatedDataset,
        population: Population,
        model_factory: ModelFactory,
        eval_batch_size: int = 1024,
        device: str = "cpu",
        vectorize: int = 0,
    ):
        self.algorithm = algorithm
        self.dataset = dataset
        self.population = population
        self.model_factory = model_factory
        self.eval_batch_size = eval_batch_size
        self.device = torch.device(device)
        # Training clients per vectorised group (0 or 1: one at a time); model key -> why not.
        self.vectorize = vectorize
        self.not_vectorized: dict[str, str] = {}
        self._declined: Broadcast | None = None  # the broadcast the algorithm would not vectorise
        self._models: dict[str, nn.Module] = {}
        self._arch_key: tuple[object, str] | None = None  # (arch, its key): one json.dumps per broadcast
        self._flops: dict[tuple, FlopProfile] = {}  # per model key, input shape/dtype and trainability
        self._device_broadcast: tuple[Broadcast, Broadcast] | None = None

    def model_for(self, broadcast: Broadcast) -> nn.Module:
        """The model for the broadcast's architecture (built once per architecture), loaded with its weights."""
        key = self._model_key(broadcast.arch)
        if key not in self._models:
            self._models[key] = self.model_factory(broadcast.arch).to(self.device)
        model = self._models[key]
        model.load_state_dict(broadcast.weights)
        return model

    def _model_key(self, arch) -> str:
        if self._arch_key is None or self._arch_key[0] is not arch:
            self._arch_key = (arch, json.dumps(arch, sort_keys=True))
        return self._arch_key[1]

    def _flop_profile(self, model: nn.Module, arch, x: torch.Tensor) -> FlopProfile:
        """training_flop_profile, remembered per runner model: its lookup hashes the whole
        architecture, a tenth of a small client's engine time. Trainability is in the key
        because an algorithm may freeze layers of the runner's model between clients."""
        key = (self._model_key(arch), tuple(x.shape[1:]), x.dtype, tuple(p.requires_grad for p in model.parameters()))
        if key not in self._flops:
            self._flops[key] = training_flop_profile(model, x)
        return self._flops[key]

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
        for group in self._groups(tasks):
            if len(group) > 1 and self._train_together(group, broadcast, densities, partial):
                continue
            for task in group:
                try:
                    if task.kind == "evaluate":
                        self._evaluate(task, broadcast, partial)
                    else:
                        self._train(task, broadcast, densities, partial)
                except Exception as exc:  # a failing client is data, not the end of the run
                    partial.add_failure(task.round, task.client, task.kind, f"{type(exc).__name__}: {exc}")
        return partial

    def _groups(self, tasks: Sequence[ClientTask]) -> list[list[ClientTask]]:
        """With vectorisation on, runs of training tasks that share kind, epochs and learning
        rate, at most `vectorize` long; else one task per group."""
        if self.vectorize <= 1:
            return [[t] for t in tasks]
        groups: list[list[ClientTask]] = []
        for t in tasks:
            last = groups[-1] if groups else None
            if (last and t.kind != "evaluate" and len(last) < self.vectorize
                    and (last[0].kind, last[0].epochs, last[0].lr) == (t.kind, t.epochs, t.lr)):
                last.append(t)
            else:
                groups.append([t])
        return groups

    def _train_together(self, group: list[ClientTask], broadcast: Broadcast, densities: dict[str, float],
                        partial: Partial) -> bool:
        """Train `group` as one vectorised computation through the algorithm's client_updates;
        False (nothing counted) when it cannot, and the caller trains them one at a time. What
        cannot be vectorised for a model is remembered, so it is tried once per architecture;
        an algorithm's refusal (None), once per broadcast."""
        key = self._model_key(broadcast.arch)
        if key in self.not_vectorized or broadcast is self._declined:
            return False
        datas = [self._client_data(self.dataset.client_train(t.client)) for t in group]
        if any(len(d) == 0 for d in datas):
            return False  # one at a time, so that client fails alone
        model = self.model_for(broadcast)
        flops = self._flop_profile(model, broadcast.arch, datas[0].x[:2])
        start = time.perf_counter()
        try:
            updates = self.algorithm.client_updates(model, datas, group, broadcast)
        except NotVectorizable as exc:
            self.not_vectorized[key] = str(exc)
            return False
        except Exception:  # noqa: BLE001 - e.g. one client's bad data: one at a time, each fails alone
            return False
        if updates is None:  # for this broadcast (a pruning method's dense rounds may vectorise, its masked not)
            self._declined = broadcast
            return False
        wall = time.perf_counter() - start
        examples = sum(u.examples_processed for u in updates) or 1
        for task, update in zip(group, updates, strict=True):
            try:  # the group's wall time is shared out by examples
                self._account(task, update, flops, wall * update.examples_processed / examples, broadcast,
                              densities, partial)
                partial.counters(task.kind).vectorized += 1
            except Exception as exc:
                partial.add_failure(task.round, task.client, task.kind, f"{type(exc).__name__}: {exc}")
        return True

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
        flops = self._flop_profile(model, broadcast.arch, data.x[:2])
        self._seed(task.seed)
        start = time.perf_counter()
        update = self.algorithm.client_update(model, data, task, broadcast)
        self._account(task, update, flops, time.perf_counter() - start, broadcast, densities, partial)

    def _account(self, task: ClientTask, update: ClientUpdate, flops: FlopProfile, train_wall_s: float,
                 broadcast: Broadcast, densities: dict[str, float], partial: Partial) -> None:
        """One trained client into `partial`: its costs, simulated time and, unless it missed the
        deadline, its contribution; a non-finite update raises (the client fails)."""
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
        # Partials travel between processes: on the CPU whatever device trained.
        partial.add_stats({k: v.to("cpu") for k, v in update.contribution.items()})
        if update.client_state is not None:
            partial.client_states[task.client] = {k: v.detach().cpu() for k, v in update.client_state.items()}
        c.done += 1
        c.samples += update.num_samples
        c.loss_sum += update.train_loss * update.num_samples
        add_metrics(partial.metrics, update.metrics)
        c.sim_time_s = max(c.sim_time_s, clock.total_s)
