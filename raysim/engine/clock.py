"""The driver's prediction of each sampled client's simulated time, for over-commit.

Over-commit (as in FedScale) samples more clients than the round needs and closes
the round once a cohort's worth has reported. The driver cannot wait for replies to
learn who is fast without holding every reply, so it predicts each client's time
from its profile, its data size and the broadcast's measured FLOPs and bytes, and
turns "the first K" into a simulated deadline the workers apply to the real clock.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from raysim.costs.flops import training_flop_profile
from raysim.data.federated import FederatedDataset
from raysim.devices import Population, client_time_s
from raysim.engine.api import Broadcast, ClientTask
from raysim.engine.runner import ModelFactory


class ClockPredictor:
    def __init__(self, dataset: FederatedDataset, population: Population, model_factory: ModelFactory):
        self.population = population
        self.model_factory = model_factory
        self.train_sizes = dataset.client_train_sizes()
        self.example = torch.tensor(dataset.example_inputs(2))
        self._flops_per_example: dict[str, float] = {}

    def flops_per_example(self, arch) -> float:
        key = json.dumps(arch, sort_keys=True)
        if key not in self._flops_per_example:
            self._flops_per_example[key] = training_flop_profile(self.model_factory(arch), self.example).total
        return self._flops_per_example[key]

    def predict_s(self, tasks: Sequence[ClientTask], broadcast: Broadcast) -> np.ndarray:
        """Simulated seconds per task, assuming the upload is as large as the download:
        client_time_s's arithmetic on arrays, in its order (the same floats, per client)."""
        per_example = self.flops_per_example(broadcast.arch)
        n, payload = len(tasks), broadcast.payload_bytes
        clients = np.fromiter((t.client for t in tasks), np.int64, n)
        epochs = np.fromiter((t.epochs for t in tasks), np.int64, n)
        if n and (clients.min() < 0 or clients.max() >= len(self.population)):
            raise IndexError(f"a client outside the population of {len(self.population)}")
        profiles = self.population.profiles
        ids = self.population.profile_ids[clients]

        def field(name: str) -> np.ndarray:
            return np.array([getattr(p, name) for p in profiles], dtype=float)[ids]

        flops = per_example * self.train_sizes[clients] * epochs
        client_time_s(profiles[0], 0.0, payload, payload)  # its checks on the payload
        if not np.all(np.isfinite(flops)) or np.any(flops < 0):
            raise ValueError(f"flops must be finite numbers >= 0, got {flops[~(np.isfinite(flops) & (flops >= 0))][:3]}")
        compute = flops / field("flops_per_s")
        download = 8 * payload / field("down_bps")
        upload = 8 * payload / field("up_bps")
        return compute + download + upload + field("latency_s")

    def round_deadline(self, tasks: Sequence[ClientTask], broadcast: Broadcast, keep: int,
                       deadline_s: float | None) -> float | None:
        """The configured deadline, tightened to the `keep`-th fastest predicted client when over-committed."""
        if len(tasks) <= keep:
            return deadline_s
        cutoff = float(np.sort(self.predict_s(tasks, broadcast))[keep - 1])
        return cutoff if deadline_s is None else min(cutoff, deadline_s)
