"""`raysim bench scale`: benchmark C (raysim/benchmarks/scale_plan.py says what it measures).
Light to import: the measuring and report modules load only when it runs."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from raysim.benchmarks.common import cores, prepare_out
from raysim.benchmarks.scale_plan import DEFAULT_ROUNDS, POPULATION, ROUND_TARGET_COHORT, SCENARIOS, STRETCH_POPULATION
from raysim.config import ConfigError


def run_scale(out: Path, scenarios: list[str], population: int, rounds: int, seed: int,
              stretch_population: int = 0) -> dict:
    biggest = max(max(SCENARIOS[s][1]) for s in scenarios)
    if rounds < 1 or population < biggest:
        raise ConfigError("benchmark C needs --rounds >= 1 and a population at least as large as the biggest cohort")
    stretch_cohort = min(ROUND_TARGET_COHORT, stretch_population)
    if stretch_population < 0:
        raise ConfigError("--stretch-population must be >= 0 (0 skips the stretch point)")
    prepare_out(out)
    from rich.console import Console

    from raysim.benchmarks.scale_report import HOW_MEASURED, print_report, targets, write_reports
    from raysim.benchmarks.scale_run import run_point, run_stretch

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
    stretch = None
    if stretch_population:
        console.print(f"C stretch: set up {stretch_population:,} clients and sample {stretch_cohort:,} ...")
        stretch = run_stretch(stretch_population, stretch_cohort, seed)
    command = f"raysim bench scale --scenarios {' '.join(scenarios)} --population {population} --rounds {rounds} " \
              f"--stretch-population {stretch_population} --seed {seed} --out {out}"
    result = {"benchmark": "C: scale", "command": command, "cores": cores(), "population": population,
              "measured_rounds_asked": rounds, "scenarios": results, "stretch": stretch,
              "targets": targets(results, rounds), "how_measured": HOW_MEASURED}
    write_reports(result, out)
    print_report(result, out, console)
    return result


def add_scale_parser(which: argparse._SubParsersAction) -> None:
    c = which.add_parser("scale", help="benchmark C: round time and driver memory up to 100,000 clients per round "
                                       "of 1,000,000")
    c.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    c.add_argument("--population", type=int, default=POPULATION)
    c.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"measured rounds per point, after one warm-up (default {DEFAULT_ROUNDS})")
    c.add_argument("--stretch-population", type=int, default=STRETCH_POPULATION,
                   help=f"clients to set up and sample from, without training (default {STRETCH_POPULATION:,}; 0 skips)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, help="output folder, new or empty (default: results/scale-<timestamp>)")


def scale_main(args: argparse.Namespace) -> int:
    out = args.out or Path("results") / f"scale-{time.strftime('%Y%m%d-%H%M%S')}"
    run_scale(out, args.scenarios, args.population, args.rounds, args.seed, args.stretch_population)
    return 0
