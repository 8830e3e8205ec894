"""What every benchmark shares: a fresh output folder, the result files, the pool it runs on."""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from raysim.config import ConfigError
from raysim.results.run_dir import write_atomic

if TYPE_CHECKING:  # the benchmarks' CLI modules import this one: no torch at `raysim --help`
    from raysim.engine.backend import Backend


def prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: not empty; the benchmark never overwrites an earlier result")
    out.mkdir(parents=True, exist_ok=True)


def write_result(out: Path, stem: str, result: dict, markdown: str) -> None:
    """`<stem>.json` (machine-readable, every number) and `<stem>.md` (the table)."""
    write_atomic(out / f"{stem}.json", json.dumps(result, indent=2, allow_nan=False).encode())
    write_atomic(out / f"{stem}.md", markdown.encode())


def cores() -> int:
    """CPUs this process may run on (the container's share, not the host's count)."""
    return len(os.sched_getaffinity(0))


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def bar_plot(labels: list[str], values: list[float], ylabel: str, title: str, path: Path) -> None:
    # Imported here so that every `raysim` command does not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(labels, values)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.tick_params(axis="x", labelsize="small", rotation=20)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def timed_rounds(backend: Backend, runner, rounds: list[list[int]], vectorized: bool = False) -> list[float]:
    """Seconds per FedAvg round (configure, run every client, aggregate) over the given cohorts;
    a round where any client did not finish is an error, not a fast round, and so is one where
    a `vectorized` way trained any client one at a time (it would not be the path it names)."""
    algorithm = runner.algorithm
    state = algorithm.init_state(runner.model_factory(None).state_dict())
    times = []
    for r, clients in enumerate(rounds):
        start = time.perf_counter()
        plan = algorithm.configure_round(state, r, clients)
        partial = backend.run(plan.tasks, plan.broadcast)
        if partial.train.done != len(clients):
            raise RuntimeError(f"round {r}: {partial.train.done} of {len(clients)} clients done "
                               f"({partial.failures[:1]})")
        if vectorized and partial.train.vectorized != len(clients):
            raise RuntimeError(f"round {r}: {partial.train.vectorized} of {len(clients)} clients trained vectorised")
        state, _ = algorithm.aggregate(state, plan, partial)
        times.append(time.perf_counter() - start)
    return times
