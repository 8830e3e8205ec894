"""Benchmark S: AutoFLIP against FedAvg and cost-matched baselines, on the same seeds.

Each arm (raysim/benchmarks/savings_arms.py) runs the base config with only the
method, its pruning knobs, seed and rounds changed, so the engine gives every arm
identical data, split, initial weights and client sampling. Every number is read
back from the runs' rounds.parquet (raysim/benchmarks/savings_measure.py); nothing
is estimated except the time plan.
"""
from __future__ import annotations

import contextlib
import math
import shlex
import sys
import time
from pathlib import Path

from rich.console import Console

from raysim.algorithms import ALGORITHMS
from raysim.benchmarks.common import prepare_out
from raysim.benchmarks.savings_arms import (
    AUTOFLIP,
    BASELINE,
    LEVELS,
    REFERENCE_POINT,
    SAVINGS_CONFIG,
    Arm,
    all_arms,
    autoflip_label,
    select_arms,
)
from raysim.benchmarks.savings_measure import (
    LAST_EVALS,
    aggregate_arm,
    check_targets,
    explorer_label_coverage,
    measure_run,
    paired_between,
)
from raysim.benchmarks.savings_report import print_headline, write_reports
from raysim.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from raysim.engine.sampling import cohort_size
from raysim.experiment import execute, new_run
from raysim.results.round_log import read_rounds
from raysim.results.summary import MEASURED

PROBE_ROUNDS = 2
TARGETS_ELSEWHERE = "targets are defined for raysim/configs/savings.yaml only"
MIN_ROUNDS = 2 * LAST_EVALS  # the plateau check compares the last 5 evaluations with the 5 before

HOW_MEASURED = MEASURED | {
    "final_accuracy": f"mean of the last {LAST_EVALS} evaluated train rounds' global test accuracy",
    "totals": "sums over rounds.parquet rows; incl_exploration = every row, excl_exploration = rows with phase != 'explore'",
    "bytes_total": "bytes_down + bytes_up",
    "reduction_vs_fedavg_pct": "per seed 100 * (arm - FedAvg) / FedAvg on the same seed, then mean/std/min/max over seeds",
    "accuracy_vs_fedavg_points": "per seed 100 * (arm accuracy - FedAvg accuracy) on the same seed, then spread over seeds",
    "iso_cost_vs_fedavg_points": f"per seed: the arm's accuracy minus FedAvg's last-{LAST_EVALS} mean at the last evaluated "
                                 "round whose cumulative cost (incl. exploration) is within the arm's total",
    "client_train_wall_ratio": "sum of client_train_wall_s over train rounds, over FedAvg's on the same seed",
    "flops_executed_ratio": "executed FLOPs of train rounds over FedAvg's on the same seed",
    "plateau_gain_points": f"100 * (mean of the last {LAST_EVALS} evaluations - mean of the {LAST_EVALS} before)",
    "adjustment_churn_min": "smallest grown_fraction (grown / kept) over the rounds whose drop fraction was above 0",
    "grow_signal_share_of_uplink": "grow_signal_bytes / bytes_up over train rounds",
    "matched_sparsity": f"prunefl, feddst: 1 - prunable_density of {autoflip_label(REFERENCE_POINT)} on the same seed",
    "spread": "std = sample standard deviation over seeds (n-1; null with one seed); min/max over seeds",
    "plan": f"a {PROBE_ROUNDS}-round FedAvg probe times a round (rounds.parquet wall_time_s) and a run's set-up and "
            "evaluation (the rest of its wall time); rounds = what fits the budget with every seed, every arm's "
            "round priced as FedAvg's (on CPU a pruned arm's wall time falls far less than its FLOPs; the growth probe "
            "even adds some), plus exploration as FedAvg client-epochs; before each further seed the last seed's measured wall time must fit what is left",
}


# ---------------------------------------------------------------- planning

def explores(arm: Arm) -> bool:
    return bool(ALGORITHMS.info(arm.method).get("explores"))


def exploration_in_rounds(cfg: ExperimentConfig) -> float:
    """Exploration's client-epochs over one round's, to price it before any has run."""
    p = cfg.algorithm.pruning
    explorers = max(1, round(p.explore_fraction * cfg.data.num_clients))
    cohort = cohort_size(cfg.clients.per_round, cfg.data.num_clients)
    return explorers * p.explore_epochs / (cohort * cfg.clients.local_epochs)


def choose_rounds(budget_s: float, round_s: float, run_overhead_s: float, explore_rounds: float, arms: list[Arm],
                  n_seeds: int, max_rounds: int) -> tuple[int, int]:
    """(rounds, seeds expected to fit): all seeds if that leaves MIN_ROUNDS rounds, else fewer seeds."""
    exploring = sum(explores(a) for a in arms)

    def rounds_for(seeds: int) -> int:
        per_seed_s = budget_s / seeds - len(arms) * run_overhead_s - exploring * explore_rounds * round_s
        return max(min(math.floor(per_seed_s / round_s / len(arms)), max_rounds), min(LAST_EVALS, max_rounds))

    seeds = n_seeds
    while seeds > 1 and rounds_for(seeds) < min(MIN_ROUNDS, max_rounds):
        seeds -= 1
    return rounds_for(seeds), seeds


def variant(base: ExperimentConfig, arm: Arm, seed: int, rounds: int, sparsity: float | None = None) -> ExperimentConfig:
    tree = base.model_dump(mode="json")
    tree |= {"name": f"{arm.label.replace('@', '-')}-s{seed}", "seed": seed, "rounds": rounds}
    tree["algorithm"]["name"] = arm.method
    tree["algorithm"]["pruning"] |= arm.pruning
    if sparsity is not None:
        tree["algorithm"]["pruning"]["sparsity"] = sparsity
    tree["output"]["progress"] = False
    return config_from_dict(tree, source=f"savings arm {arm.label} seed {seed}")


def timed_run(cfg: ExperimentConfig, parent: Path) -> tuple[Path, float]:
    run_dir = new_run(cfg, parent)
    start = time.perf_counter()
    execute(cfg, run_dir, quiet=True)  # the benchmark prints one line per run instead
    return run_dir, time.perf_counter() - start


def plan(base: ExperimentConfig, out: Path, budget_s: float, seeds: list[int], rounds: int | None,
         arms: list[Arm], console: Console) -> dict:
    if rounds is not None:
        return {"rounds": rounds, "rounds_from": "--rounds", "seeds_expected": len(seeds), "probe": None}
    probe = Arm(BASELINE, BASELINE, "baseline")
    probe_dir, probe_s = timed_run(variant(base, probe, seeds[0], PROBE_ROUNDS), out / "calibration")
    rounds_s = sum(r["wall_time_s"] for r in read_rounds(probe_dir))
    round_s = rounds_s / PROBE_ROUNDS
    overhead_s = probe_s - rounds_s  # set-up and evaluation: paid by every run
    explore_rounds = exploration_in_rounds(base)
    chosen, expected = choose_rounds(budget_s - probe_s, round_s, overhead_s, explore_rounds, arms, len(seeds),
                                     base.rounds)
    console.print(f"probe: {round_s:.1f} s per round, {overhead_s:.1f} s per run -> {chosen} rounds, "
                  f"{expected} seed(s) expected to fit")
    return {"rounds": chosen, "rounds_from": "budget", "seeds_expected": expected,
            "probe": {"run_dir": str(probe_dir), "rounds": PROBE_ROUNDS, "wall_s": probe_s, "round_s": round_s,
                      "run_overhead_s": overhead_s, "exploration_in_rounds": explore_rounds, "max_rounds": base.rounds}}


# ---------------------------------------------------------------- running

def run_seed(base: ExperimentConfig, arms: list[Arm], seed: int, rounds: int, parent: Path,
             console: Console) -> dict:
    """Every arm on one seed; AutoFLIP's prunable density at P1 is handed to the matched baselines."""
    runs = {}
    matched_sparsity = None
    for arm in arms:
        sparsity = matched_sparsity if arm.matched else None
        cfg = variant(base, arm, seed, rounds, sparsity)
        run_dir, wall_s = timed_run(cfg, parent)
        measured = measure_run(read_rounds(run_dir))
        runs[arm.label, seed] = measured | {
            "label": arm.label, "method": arm.method, "group": arm.group, "point": arm.point, "seed": seed,
            "run_dir": str(run_dir), "pruning": cfg.algorithm.pruning.model_dump(mode="json"), "run_wall_s": wall_s,
        }
        if arm.label == autoflip_label(REFERENCE_POINT):
            matched_sparsity = 1.0 - measured["final_prunable_density"]
        acc = measured["final_accuracy"]
        console.print(f"  seed {seed} {arm.label:<28} acc {'n/a' if acc is None else f'{acc:.4f}'}  {wall_s:6.1f} s")
    return runs


def run_seeds(base: ExperimentConfig, arms: list[Arm], seeds: list[int], rounds: int, out: Path,
              deadline: float, console: Console) -> tuple[dict, list[int], list[int]]:
    """Seeds in order while the last seed's measured time still fits before the deadline."""
    runs: dict = {}
    done: list[int] = []
    last_seed_s = 0.0
    for seed in seeds:
        if done and time.perf_counter() + last_seed_s > deadline:
            break
        start = time.perf_counter()
        runs |= run_seed(base, arms, seed, rounds, out / "runs", console)
        last_seed_s = time.perf_counter() - start
        done.append(seed)
    return runs, done, [s for s in seeds if s not in done]


def label_coverage(base: ExperimentConfig, seeds: list[int]) -> dict:
    """Per seed, the labels AutoFLIP's explorers hold (the report's reading of the partition)."""
    from raysim.data.loading import load_federated_dataset

    out = {}
    for seed in seeds:
        ds = load_federated_dataset(base.data, seed)
        explorer_ids = ALGORITHMS.get(AUTOFLIP).explorer_ids  # the registry's, not an import of autoflip
        explorers = explorer_ids(seed, base.algorithm.pruning.explore_fraction, ds.num_clients)
        labels = {k: {int(v) for v in ds.train.y[ds.client_train_rows(k)]} for k in explorers}
        out[str(seed)] = explorer_label_coverage(labels, explorers, ds.num_classes)
    return out


def comparisons(labels: list[str]) -> list[tuple[str, str]]:
    """The paired accuracy differences the report shows (both arms must have run)."""
    pairs = [(autoflip_label(lv), f"{c}@{lv}") for lv in LEVELS for c in ("hybrid_random", "hybrid_magnitude")]
    p1 = autoflip_label(REFERENCE_POINT)
    pairs += [(p1, a.label) for a in all_arms() if a.group in ("matched", "ablation")]
    return [(a, b) for a, b in pairs if a in labels and b in labels]


def judged_targets(base: ExperimentConfig, per_arm: dict, versus: dict) -> dict:
    """T1-T4 are thresholds for the project's own workload (savings.yaml as shipped); on any
    other config they would mislead, so none is stamped."""
    if base.model_dump() == load_config(SAVINGS_CONFIG).model_dump():
        return {"targets": check_targets(per_arm, versus), "targets_not_judged_because": None}
    return {"targets": [], "targets_not_judged_because": TARGETS_ELSEWHERE}


def equivalent_command(out: Path, budget_minutes: float, seeds: list[int], rounds: int | None,
                       arms: list[str] | None, config: Path | None) -> str:
    argv = ["raysim", "bench", "savings", "--budget-minutes", f"{budget_minutes:g}", "--seeds", *map(str, seeds),
            "--out", str(out)]
    if arms:
        argv += ["--arms", *arms]
    if config:
        argv += ["--config", str(config)]
    if rounds is not None:
        argv += ["--rounds", str(rounds)]
    return shlex.join(argv)


def run_savings(out: Path, budget_minutes: float, seeds: list[int], rounds: int | None, arm_labels: list[str] | None,
                base_config: Path | None) -> dict:
    """Run benchmark S into `out` and return what comparison.json holds."""
    if budget_minutes <= 0 or not seeds or (rounds is not None and rounds < 1):
        raise ConfigError("the savings benchmark needs a positive budget, at least one seed and rounds >= 1")
    seeds = list(dict.fromkeys(seeds))
    arms = select_arms(arm_labels)
    config_path = Path(base_config or SAVINGS_CONFIG).resolve()
    base = load_config(config_path)
    prepare_out(out)
    console = Console()
    started = time.perf_counter()
    deadline = started + 60.0 * budget_minutes
    session = contextlib.nullcontext()
    if base.backend.name == "ray":  # one Ray instance for every run, not one each
        from raysim.engine.ray_backend import ray_session
        session = ray_session(base.backend)
    with session:
        time_plan = plan(base, out, deadline - started, seeds, rounds, arms, console)
        runs, done, skipped = run_seeds(base, arms, seeds, time_plan["rounds"], out, deadline, console)
    labels = [a.label for a in arms]
    per_arm = {label: aggregate_arm(runs, label, done) for label in labels}
    versus = {(a, b): paired_between(runs, a, b, done) for a, b in comparisons(labels)}
    result = {
        "benchmark": "S: AutoFLIP against FedAvg and cost-matched baselines",
        "command": equivalent_command(out, budget_minutes, seeds, rounds, arm_labels, base_config),
        "argv": sys.argv,
        "base_config_name": config_path.name,
        "base_config": base.model_dump(mode="json"),
        "arms": [{"label": a.label, "method": a.method, "group": a.group, "point": a.point, "pruning": a.pruning}
                 for a in arms],
        "levels": {k: {"structured_fraction": s, "sparsity": q} for k, (s, q) in LEVELS.items()},
        "seeds_requested": seeds,
        "seeds": done,
        "seeds_skipped_for_budget": skipped,
        "rounds": time_plan["rounds"],
        "plan": time_plan | {"budget_s": 60.0 * budget_minutes, "elapsed_s": time.perf_counter() - started},
        "explorer_label_coverage": label_coverage(base, done),
        "runs": [runs[label, s] for s in done for label in labels],
        "per_arm": per_arm,
        "versus": [{"arm": a, "reference": b, **d} for (a, b), d in versus.items()],
        **judged_targets(base, per_arm, versus),
        "how_measured": HOW_MEASURED,
    }
    write_reports(result, out)
    print_headline(result, console)
    return result
