"""`raysim bench savings`: benchmark S (raysim/benchmarks/savings.py plans and runs it).
Light to import: the runs' modules load only when it runs."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from raysim.benchmarks.savings_arms import SAVINGS_CONFIG, all_arms


def add_savings_parser(which: argparse._SubParsersAction) -> None:
    s = which.add_parser("savings", help="benchmark S: AutoFLIP against FedAvg and cost-matched baselines on Fashion-MNIST")
    s.add_argument("--budget-minutes", type=float, default=60.0,
                   help="wall-clock budget; rounds and seeds are fitted to it (default 60)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run, in order, while the budget lasts (default 0 1 2)")
    s.add_argument("--rounds", type=int, help="fixed rounds per run (default: the most that fit the budget, up to the config's rounds)")
    s.add_argument("--arms", nargs="+", choices=[a.label for a in all_arms()], metavar="ARM",
                   help="arms to run (default: all but the dense algorithms fedprox, fedadam, fedyogi, fedadagrad, "
                        "scaffold, which run only when named); fedavg always runs, and autoflip@P1 with a matched "
                        "baseline")
    s.add_argument("--out", type=Path, help="output folder, new or empty (default: results/savings-<timestamp>)")
    s.add_argument("--config", type=Path, help=f"base experiment config (default: the embedded {SAVINGS_CONFIG.name}; "
                                               "targets T1-T4 are judged on that workload only)")


def savings_main(args: argparse.Namespace) -> int:
    from raysim.benchmarks.savings import run_savings

    out = args.out or Path("results") / f"savings-{time.strftime('%Y%m%d-%H%M%S')}"
    run_savings(out, args.budget_minutes, args.seeds, args.rounds, args.arms, args.config)
    return 0
