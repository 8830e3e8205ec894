"""`raysim bench engine`: benchmark E (raysim/benchmarks/engine_plan.py says what it measures).
Light to import: the timing and report modules load only when it runs."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from raysim.benchmarks.common import cores, prepare_out
from raysim.benchmarks.engine_plan import DEFAULT_ROUNDS, WORKLOADS
from raysim.config import ConfigError


def run_engine(out: Path, workloads: list[str], rounds: int, seed: int, data_path: Path | None) -> dict:
    if rounds < 1:
        raise ConfigError("--rounds must be at least 1 (plus one warm-up round)")
    prepare_out(out)
    from rich.console import Console
    from rich.markup import escape

    from raysim.benchmarks.engine_report import HOW_MEASURED, print_report, summarise, write_reports
    from raysim.benchmarks.engine_run import time_workload

    console = Console()
    results = [summarise(time_workload(name, rounds, seed, data_path, lambda s: console.print(escape(s))), rounds)
               for name in workloads]
    command = (f"raysim bench engine --workloads {' '.join(workloads)} --rounds {rounds} --seed {seed} --out {out}"
               + (f" --data {data_path}" if data_path else ""))
    result = {"benchmark": "E: engine efficiency", "command": command, "cores": cores(),
              "workloads": results, "how_measured": HOW_MEASURED}
    write_reports(result, out)
    print_report(result, out, console)
    return result


def add_engine_parser(which: argparse._SubParsersAction) -> None:
    e = which.add_parser("engine", help="benchmark E: Ray backend vs the compute limit (one resident model per "
                                        "core), the floor loop and the in-process backend on Fashion-MNIST")
    e.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=sorted(WORKLOADS))
    e.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"measured rounds per way, after one warm-up (default {DEFAULT_ROUNDS})")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data", type=Path, help="Fashion-MNIST folder (default: the Debian package's)")
    e.add_argument("--out", type=Path, help="output folder, new or empty (default: results/engine-<timestamp>)")


def engine_main(args: argparse.Namespace) -> int:
    out = args.out or Path("results") / f"engine-{time.strftime('%Y%m%d-%H%M%S')}"
    run_engine(out, args.workloads, args.rounds, args.seed, args.data)
    return 0
