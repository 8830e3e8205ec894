"""A test model plug-in whose speed depends on the pool it runs in: logistic regression
that sleeps per example, longer on a worker holding the custom resource `slow_group`
(tests/test_pools.py declares it on one node). Sleeping, not computing, makes the two
pools' speeds differ by a known factor whatever else loads this machine's cores."""
from __future__ import annotations

import math
import time

import ray
import torch

from raysim.models.zoo import LogisticRegression

FAST_S_PER_EXAMPLE = 0.0002
SLOW_S_PER_EXAMPLE = 0.0008  # 4x slower


class PoolSpeedLogReg(LogisticRegression):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "_per_example_s"):
            worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
            slow = worker and "slow_group" in ray.get_runtime_context().get_assigned_resources()
            self._per_example_s = SLOW_S_PER_EXAMPLE if slow else FAST_S_PER_EXAMPLE
        time.sleep(self._per_example_s * len(x))
        return super().forward(x)


def build(shape: tuple[int, ...], classes: int, cfg) -> PoolSpeedLogReg:
    return PoolSpeedLogReg(math.prod(shape), classes)
