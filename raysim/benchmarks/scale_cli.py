"""`raysim bench scale`: benchmark C (raysim/benchmarks/scale_plan.py says what it measures).
Light to import: the measuring and report modules load only when it runs."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from raysim.benchmarks.common import cores, prepare_out
from raysim.benchmarks.scale_plan import DEFAULT_ROUNDS, POPULATION, SCENARIOS
from raysim.config import ConfigError


def run_scale(out: Path, scenarios: list[str], population: int, rounds: int, seed: int) -> dict:
    if rounds < 1 or population < max(max(SCENARIOS[s][1]) for s in scenarios):
        raise ConfigError("benchmark C needs --rounds >= 1 and a population at least as large as the biggest cohort")
    prepare_out(out)
    from rich.console import Console

    from raysim.benchmarks.scale_report import HOW_MEASURED, print_report, targets, write_reports
    from raysim.benchmarks.scale_run import run_point

    console = Console()
    results = {}
    for name in scenarios:
        model, cohorts = SCENARIOS[name]
        points = []
        for cohort in cohorts:
            console.print(f"C {name}: {cohort:,} clients per round of {population:,} ...")
            points.append(run_point(model, population, cohort, rounds, seed))
            p = points[-1]
            console.print(f"  round {p['round_s_median']:.2f} s, driver peak {p['driver_peak_rss_rounds_bytes'] / 2**20:.0f} MiB")
        results[name] = {"model": model, "points": points}
    command = f"raysim bench scale --scenarios {' '.join(scenarios)} --population {population} --rounds {rounds} " \
              f"--seed {seed} --out {out}"
    result = {"benchmark": "C: scale", "command": command, "cores": cores(), "population": population,
              "measured_rounds_asked": rounds, "scenarios": results, "targets": targets(results, rounds),
              "how_measured": HOW_MEASURED}
    write_reports(result, out)
    print_report(result, out, console)
    return result


def add_scale_parser(which: argparse._SubParsersAction) -> None:
    c = which.add_parser("scale", help="benchmark C: round time and driver memory up to 10,000 clients per round")
    c.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    c.add_argument("--population", type=int, default=POPULATION)
    c.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"measured rounds per point, after one warm-up (default {DEFAULT_ROUNDS})")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, help="output folder, new or empty (default: results/scale-<timestamp>)")


def scale_main(args: argparse.Namespace) -> int:
    out = args.out or Path("results") / f"scale-{time.strftime('%Y%m%d-%H%M%S')}"
    run_scale(out, args.scenarios, args.population, args.rounds, args.seed)
    return 0
