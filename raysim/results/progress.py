"""How a run reports its rounds as they end: a rich progress bar on a terminal, one plain
line per round elsewhere (`--no-progress`, CI logs, a pipe).

An algorithm's set-up phase (AutoFLIP's exploration, logged as round 0) is its own step
in both, never an extra round: the bar's round count stays rounds/rounds.
"""
from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial


def _updates_per_s(record: RoundRecord) -> float | None:
    return record.clients_done / record.wall_time_s if record.wall_time_s > 0 else None


class ProgressBar(Callback):
    """A bar over the training rounds (accuracy, updates/s, elapsed, ETA); with `explores`, a
    line for the set-up phase above it."""

    def __init__(self, rounds: int, start_round: int, label: str, explores: bool = False,
                 console: Console | None = None):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"), TextColumn("{task.fields[ups]} updates/s"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console,
        )
        self.label = escape(label)  # a label like "name [fedavg]" is text, not rich markup
        self.explore_task = None
        if explores and start_round == 0:
            self._add_explore_task()
        self.task = self.progress.add_task(f"{self.label} rounds", total=rounds, completed=start_round, acc="-",
                                           ups="-")
        self.progress.start()

    def _add_explore_task(self) -> None:
        self.explore_task = self.progress.add_task(f"{self.label} exploration", total=1, acc="-", ups="-")

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        ups = _updates_per_s(record)
        fields = {"ups": "-" if ups is None else f"{ups:.1f}"}
        if record.accuracy is not None:
            fields["acc"] = f"{record.accuracy:.3f}"
        if record.phase == "train":
            self.progress.update(self.task, advance=1, **fields)
            return
        if self.explore_task is None:  # an import-path algorithm did not declare it explores
            self._add_explore_task()
        self.progress.update(self.explore_task, completed=1, **fields)

    def on_run_end(self, state: ServerState) -> None:
        self.progress.stop()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RoundLines(Callback):
    """One line per round: round, test accuracy when evaluated, train loss, updates/s,
    elapsed and ETA. The ETA extrapolates the rounds this process ran (evaluation
    included), so a resumed run's earlier rounds and the set-up phase do not skew it."""

    def __init__(self, rounds: int, label: str, stream: TextIO | None = None):
        self.rounds = rounds
        self.label = label
        self.stream = stream
        self.started = time.perf_counter()
        self.first_round_start: float | None = None
        self.rounds_done = 0

    def _print(self, text: str) -> None:
        print(f"{self.label}: {text}", file=self.stream or sys.stdout, flush=True)

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        now = time.perf_counter()
        parts = []
        if record.accuracy is not None:
            parts.append(f"test acc {record.accuracy:.4f}")
        parts.append("train loss n/a" if math.isnan(record.train_loss) else f"train loss {record.train_loss:.4f}")
        ups = _updates_per_s(record)
        parts.append(f"{'n/a' if ups is None else f'{ups:.1f}'} updates/s")
        if record.phase != "train":
            parts.append(f"{record.wall_time_s:.1f} s")
            phase = {"explore": "exploration"}.get(record.phase, record.phase)
            self._print(f"{phase} (round {record.round}, before round 1): {record.clients_done} clients, "
                        + ", ".join(parts))
            return
        if self.first_round_start is None:
            self.first_round_start = now - record.wall_time_s
        self.rounds_done += 1
        per_round = (now - self.first_round_start) / self.rounds_done
        parts.append(f"elapsed {_clock(now - self.started)}")
        parts.append(f"ETA {_clock(per_round * (self.rounds - record.round))}")
        self._print(f"round {record.round}/{self.rounds}: " + ", ".join(parts))


def round_reporter(rounds: int, start_round: int, label: str, *, bar: bool, explores: bool,
                   console: Console | None = None) -> Callback:
    """The bar when asked for and the output is a terminal (or a notebook), else lines."""
    shown = console or Console()
    if bar and (shown.is_terminal or shown.is_jupyter):
        return ProgressBar(rounds, start_round, label, explores, shown)
    return RoundLines(rounds, label, console.file if console else None)
