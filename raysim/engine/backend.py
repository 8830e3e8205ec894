"""Backends run a round's client tasks and hand back one merged Partial.

Failures travel inside the Partial as data; the algorithm decides what a
missing client means.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from raysim.config import BackendConfig
from raysim.engine.api import Broadcast, ClientTask
from raysim.engine.runner import ClientRunner
from raysim.engine.stats import Partial


class Backend(ABC):
    @abstractmethod
    def run(self, tasks: Sequence[ClientTask], broadcast: Broadcast) -> Partial: ...

    def close(self) -> None:
        """Release workers; the in-process backend holds none."""

    def wait_ready(self) -> None:
        """Block until every worker can take clients (and has paid its first client's one-off
        costs), so that start-up is not billed to round 1."""

    def pool_info(self) -> dict[str, float]:
        """The worker pool during the last `run` (size, busy fraction), for the round log and metrics."""
        return {}

    def new_workers(self) -> list[dict]:
        """Workers started since the last call (their info: node, resources, device, pid)."""
        return []

    def new_merges(self) -> list[dict]:
        """Merges of partials submitted since the last call (node, inputs, inputs from other nodes)."""
        return []


def worker_threads(cfg: BackendConfig) -> int:
    """Torch threads per worker: its whole CPUs, at least one (with several pools, the first
    pool's: what the in-process reference uses)."""
    return max(1, int(cfg.resolved_pools()[0].num_cpus_per_worker))


@contextmanager
def torch_threads(n: int):
    """Run with `n` intra-op threads. Float32 reductions depend on the thread count, so a
    client trains identically only under the same count wherever it runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class InProcessBackend(Backend):
    """Runs every client sequentially in this process, with the thread count a Ray worker
    would use: the reference the Ray backend is tested against."""

    def __init__(self, runner: ClientRunner, threads: int = 1):
        self.runner = runner
        self.threads = threads

    def wait_ready(self) -> None:
        with torch_threads(self.threads):
            self.runner.warm_up()

    def run(self, tasks: Sequence[ClientTask], broadcast: Broadcast) -> Partial:
        with torch_threads(self.threads):
            return self.runner.run(tasks, broadcast)
