"""Benchmarks of docs/benchmarks.md, each one command writing JSON, Markdown and PNG plots.

- `savings` (S): AutoFLIP and its baselines against FedAvg on the same seeds, with
  costs counted with and without the exploration phase.
- `engine` (E): the same client work as a plain loop, in-process and on Ray.
- `scale` (C): round time and driver memory from 1,000 to 10,000 clients per round.

Each is split by job: `<name>_cli` (arguments; light, so `raysim --help` stays fast),
a plan (what runs: workloads, arms, scenarios, targets), a run (timing, on Ray through
raysim.experiment's backend_session and build_backend) and a report (numbers, verdicts,
Markdown, plots). A target on a measurement that fails a sanity check reads
"not judged: <why>" (raysim/benchmarks/verdict.py).
"""
from __future__ import annotations

import argparse


def add_bench_parsers(sub: argparse._SubParsersAction) -> None:
    """`raysim bench {savings,engine,scale} ...`; dispatch with bench_main."""
    from raysim.benchmarks.engine_cli import add_engine_parser
    from raysim.benchmarks.savings_cli import add_savings_parser
    from raysim.benchmarks.scale_cli import add_scale_parser

    bench = sub.add_parser("bench", help="run a benchmark of docs/benchmarks.md")
    which = bench.add_subparsers(dest="benchmark", required=True)
    add_savings_parser(which)
    add_engine_parser(which)
    add_scale_parser(which)


def bench_main(args: argparse.Namespace) -> int:
    from raysim.benchmarks import engine_cli, savings_cli, scale_cli

    mains = {"savings": savings_cli.savings_main, "engine": engine_cli.engine_main, "scale": scale_cli.scale_main}
    return mains[args.benchmark](args)
