"""Backends run a round's client tasks and hand back one merged Partial.

Failures travel inside the Partial as data; the algorithm decides what a
missing client means.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from raysim.engine.api import Broadcast, ClientTask
from raysim.engine.runner import ClientRunner
from raysim.engine.stats import Partial


class Backend(ABC):
    @abstractmethod
    def run(self, tasks: Sequence[ClientTask], broadcast: Broadcast) -> Partial: ...

    def close(self) -> None:
        """Release workers; the in-process backend holds none."""


class InProcessBackend(Backend):
    """Runs every client sequentially in this process: the reference for bit-exact results."""

    def __init__(self, runner: ClientRunner):
        self.runner = runner

    def run(self, tasks: Sequence[ClientTask], broadcast: Broadcast) -> Partial:
        return self.runner.run(tasks, broadcast)
