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
        """Simulated seconds per task, assuming the upload is as large as the download."""
        per_example = self.flops_per_example(broadcast.arch)
        return np.array([
            client_time_s(self.population.profile(t.client), per_example * self.train_sizes[t.client] * t.epochs,
                          broadcast.payload_bytes, broadcast.payload_bytes).total_s
            for t in tasks
        ])

    def round_deadline(self, tasks: Sequence[ClientTask], broadcast: Broadcast, keep: int,
                       deadline_s: float | None) -> float | None:
        """The configured deadline, tightened to the `keep`-th fastest predicted client when over-committed."""
        if len(tasks) <= keep:
            return deadline_s
        cutoff = float(np.sort(self.predict_s(tasks, broadcast))[keep - 1])
        return cutoff if deadline_s is None else min(cutoff, deadline_s)
