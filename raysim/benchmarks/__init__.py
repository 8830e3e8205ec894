"""Benchmarks of docs/benchmarks.md, each one command writing JSON, Markdown and PNG plots.

- `savings` (S): AutoFLIP and its baselines against FedAvg on the same seeds, with
  costs counted with and without the exploration phase.
- `engine` (E): the same client work as a plain loop, in-process and on Ray.
- `scale` (C): round time and driver memory from 1,000 to 10,000 clients per round.
"""
from __future__ import annotations

import argparse


def add_bench_parsers(sub: argparse._SubParsersAction) -> None:
    """`raysim bench {savings,engine,scale} ...`; dispatch with bench_main."""
    from raysim.benchmarks.engine import add_engine_parser
    from raysim.benchmarks.savings import add_savings_parser
    from raysim.benchmarks.scale import add_scale_parser

    bench = sub.add_parser("bench", help="run a benchmark of docs/benchmarks.md")
    which = bench.add_subparsers(dest="benchmark", required=True)
    add_savings_parser(which)
    add_engine_parser(which)
    add_scale_parser(which)


def bench_main(args: argparse.Namespace) -> int:
    from raysim.benchmarks import engine, savings, scale

    mains = {"savings": savings.savings_main, "engine": engine.engine_main, "scale": scale.scale_main}
    return mains[args.benchmark](args)
