"""Benchmark S: AutoFLIP's savings against FedAvg, every method on the same seeds.

Each method runs the base config with only algorithm.name, seed and rounds
changed (random and magnitude pruning also get AutoFLIP's parameter sparsity
of the same seed), so the engine gives them identical data, split, initial
weights and client sampling. Every number is read back from the runs'
rounds.parquet; nothing is estimated except the time plan.
"""
from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raysim.benchmarks.common import prepare_out, write_result
from raysim.config import ALGORITHMS, ConfigError, ExperimentConfig, config_from_dict, load_config
from raysim.engine.sampling import cohort_size
from raysim.experiment import execute, new_run
from raysim.results.round_log import read_rounds
from raysim.results.summary import MEASURED

SAVINGS_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "savings.yaml"
BASELINE = "fedavg"
AUTOFLIP = "autoflip"
AT_AUTOFLIP_SPARSITY = ("random", "magnitude")
# What the published tables ran; the hybrid controls join when the benchmark is rebuilt around them.
DEFAULT_METHODS = tuple(m for m in ALGORITHMS if not m.startswith("hybrid_"))
COST_KEYS = ("flops_executed", "flops_effective", "bytes_down", "bytes_up", "bytes_total", "sim_time_s")
SCOPES = ("incl_exploration", "excl_exploration")
LAST_EVALS = 3
PROBE_ROUNDS = 2
MIN_ROUNDS = 10  # fewer rounds leave the last-3 mean inside FedAvg's early swings; drop seeds first

# (label, reduction key, threshold in %): "-55 % or better" means reduction <= threshold.
COST_TARGETS = (
    ("effective FLOPs incl. exploration", "flops_effective", -55.0),
    ("executed FLOPs incl. exploration", "flops_executed", -35.0),
    ("bytes (down+up) incl. exploration", "bytes_total", -50.0),
)
ACCURACY_TOLERANCE_POINTS = 0.5

HOW_MEASURED = MEASURED | {
    "final_accuracy": f"mean of the last {LAST_EVALS} evaluated train rounds' global test accuracy (rounds.parquet `accuracy`)",
    "totals": "sums over rounds.parquet rows; incl_exploration = every row, excl_exploration = rows with phase != 'explore'",
    "bytes_total": "bytes_down + bytes_up",
    "reduction_pct": "per seed 100 * (method - FedAvg) / FedAvg on the same seed, then mean/std/min/max over seeds; negative = saving",
    "accuracy_delta_points": "per seed 100 * (method accuracy - reference accuracy) on the same seed, then mean/std/min/max over seeds",
    "run_wall_s": "time.perf_counter around the whole run on this machine (data set-up, exploration, rounds, evaluation)",
    "spread": "std = sample standard deviation over seeds (n-1; null with one seed); min/max over seeds",
    "pruning_sparsity": "random/magnitude: 1 - param_density of AutoFLIP's final train round on the same seed (the base config's sparsity when AutoFLIP is not run)",
    "curves": "per round, mean over seeds: accuracy where evaluated, cumulative executed FLOPs and bytes (down+up) including exploration",
    "plan": f"a {PROBE_ROUNDS}-round FedAvg probe times a round (its wall time / rounds, setup included); rounds = what fits the budget "
            f"with every requested seed, dropping seeds while that is under {MIN_ROUNDS}; before each further seed the last seed's "
            "measured wall time must fit what is left of the budget",
}


# ---------------------------------------------------------------- measuring

def _number(value) -> bool:
    return value is not None and not math.isnan(value)


def final_accuracy(rows: list[dict]) -> float | None:
    evals = [r["accuracy"] for r in rows if _number(r.get("accuracy"))]
    return statistics.fmean(evals[-LAST_EVALS:]) if evals else None


def cost_totals(rows: list[dict]) -> dict[str, float]:
    totals = {key: float(sum(r[key] for r in rows)) for key in COST_KEYS if key != "bytes_total"}
    totals["bytes_total"] = totals["bytes_down"] + totals["bytes_up"]
    return totals


def measure_run(rows: list[dict]) -> dict:
    """What the comparison needs from one run's round rows."""
    train = [r for r in rows if r["phase"] != "explore"]
    last = train[-1] if train else {}
    return {
        "final_accuracy": final_accuracy(train),
        "evaluations": sum(_number(r.get("accuracy")) for r in train),
        "exploration_rows": len(rows) - len(train),
        "incl_exploration": cost_totals(rows),
        "excl_exploration": cost_totals(train),
        "final_param_density": last.get("param_density"),
        "final_sparsity": last.get("sparsity"),
    }


# ---------------------------------------------------------------- aggregating

def spread(values: list[float]) -> dict:
    """Mean with its spread over seeds, labelled (see HOW_MEASURED['spread'])."""
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {"n": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values)}


def reduction_pct(value: float, baseline: float) -> float | None:
    return 100.0 * (value - baseline) / baseline if baseline else None


def _paired(runs: dict, method: str, reference: str, seeds: list[int], value) -> dict:
    per_seed = {s: value(runs[method, s], runs[reference, s]) for s in seeds}
    kept = {s: v for s, v in per_seed.items() if v is not None}
    return {"per_seed": {str(s): v for s, v in kept.items()}} | spread(list(kept.values()))


def reductions(runs: dict, method: str, seeds: list[int]) -> dict:
    """Cost reductions of `method` against FedAvg on the same seeds, both scopes."""
    return {
        scope: {
            key: _paired(runs, method, BASELINE, seeds,
                         lambda m, f, scope=scope, key=key: reduction_pct(m[scope][key], f[scope][key]))
            for key in COST_KEYS
        }
        for scope in SCOPES
    }


def accuracy_delta(runs: dict, method: str, reference: str, seeds: list[int]) -> dict:
    def points(m: dict, r: dict) -> float | None:
        if m["final_accuracy"] is None or r["final_accuracy"] is None:
            return None
        return 100.0 * (m["final_accuracy"] - r["final_accuracy"])

    return _paired(runs, method, reference, seeds, points)


def aggregate_method(runs: dict, method: str, seeds: list[int]) -> dict:
    measured = [runs[method, s] for s in seeds]
    out = {
        "final_accuracy": spread([m["final_accuracy"] for m in measured if m["final_accuracy"] is not None]),
        **{scope: {key: spread([m[scope][key] for m in measured]) for key in COST_KEYS} for scope in SCOPES},
        "run_wall_s": spread([m["run_wall_s"] for m in measured]),
    }
    densities = [m["final_param_density"] for m in measured if m["final_param_density"] is not None]
    if densities:
        out["final_param_density"] = spread(densities)
    if method != BASELINE:
        out["reduction_vs_fedavg_pct"] = reductions(runs, method, seeds)
        out["accuracy_delta_points"] = {BASELINE: accuracy_delta(runs, method, BASELINE, seeds)}
    if method == AUTOFLIP:
        for ref in AT_AUTOFLIP_SPARSITY:
            if (ref, seeds[0]) in runs:
                out["accuracy_delta_points"][ref] = accuracy_delta(runs, method, ref, seeds)
    return out


def check_targets(methods: dict) -> list[dict]:
    """Benchmark S's targets for AutoFLIP; `met` is None when a method they need was not run."""
    autoflip = methods.get(AUTOFLIP)
    deltas = autoflip["accuracy_delta_points"] if autoflip else {}
    targets = [{
        "target": f"AutoFLIP accuracy >= FedAvg - {ACCURACY_TOLERANCE_POINTS} points",
        "value": (deltas.get(BASELINE) or {}).get("mean"), "threshold": -ACCURACY_TOLERANCE_POINTS, "unit": "points",
    }]
    targets += [{
        "target": f"AutoFLIP accuracy >= {ref} pruning at its sparsity",
        "value": (deltas.get(ref) or {}).get("mean"), "threshold": 0.0, "unit": "points",
    } for ref in AT_AUTOFLIP_SPARSITY]
    for t in targets:
        t["met"] = None if t["value"] is None else t["value"] >= t["threshold"]
    for label, key, threshold in COST_TARGETS:
        value = autoflip["reduction_vs_fedavg_pct"]["incl_exploration"][key]["mean"] if autoflip else None
        targets.append({"target": f"{label} <= {threshold:g} %", "value": value, "threshold": threshold, "unit": "%",
                        "met": None if value is None else value <= threshold})
    return targets


def mean_curve(rows_per_seed: list[list[dict]]) -> dict:
    """Per round, the mean over seeds (rounds are the same for every seed of a method)."""
    curve = {"round": [], "accuracy": [], "cum_flops_executed": [], "cum_bytes": []}
    flops = [0.0] * len(rows_per_seed)
    sent = [0.0] * len(rows_per_seed)
    for step in zip(*rows_per_seed):
        for i, row in enumerate(step):
            flops[i] += row["flops_executed"]
            sent[i] += row["bytes_down"] + row["bytes_up"]
        accs = [r["accuracy"] for r in step if _number(r.get("accuracy"))]
        curve["round"].append(step[0]["round"])
        curve["accuracy"].append(statistics.fmean(accs) if accs else None)
        curve["cum_flops_executed"].append(statistics.fmean(flops))
        curve["cum_bytes"].append(statistics.fmean(sent))
    return curve


# ---------------------------------------------------------------- planning

def order_methods(methods: list[str] | None) -> list[str]:
    """FedAvg first (everything is compared to it), AutoFLIP next (random and magnitude take its sparsity)."""
    chosen = list(dict.fromkeys(methods or DEFAULT_METHODS))
    unknown = [m for m in chosen if m not in ALGORITHMS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; allowed: {', '.join(ALGORITHMS)}")
    front = [BASELINE] + [AUTOFLIP] * (AUTOFLIP in chosen)
    return front + [m for m in chosen if m not in front]


def explores(method: str) -> bool:
    return method.startswith(AUTOFLIP)


def exploration_in_rounds(cfg: ExperimentConfig) -> float:
    """Exploration's client-epochs over one round's, to price it before any has run."""
    p = cfg.algorithm.pruning
    explorers = math.ceil(p.explore_fraction * cfg.data.num_clients)
    cohort = cohort_size(cfg.clients.per_round, cfg.data.num_clients)
    return explorers * p.explore_epochs / (cohort * cfg.clients.local_epochs)


def choose_rounds(budget_s: float, round_s: float, explore_rounds: float, methods: list[str],
                  n_seeds: int, max_rounds: int) -> tuple[int, int]:
    """(rounds, seeds expected to fit): all seeds if that leaves MIN_ROUNDS rounds, else fewer seeds."""
    exploring = sum(explores(m) for m in methods)

    def rounds_for(seeds: int) -> int:
        per_seed_rounds = budget_s / seeds / round_s - exploring * explore_rounds
        fit = math.floor(per_seed_rounds / len(methods))
        return max(min(fit, max_rounds), min(LAST_EVALS, max_rounds))  # the last-3 mean needs 3 evaluations

    seeds = n_seeds
    while seeds > 1 and rounds_for(seeds) < min(MIN_ROUNDS, max_rounds):
        seeds -= 1
    return rounds_for(seeds), seeds


def variant(base: ExperimentConfig, method: str, seed: int, rounds: int, sparsity: float | None = None) -> ExperimentConfig:
    tree = base.model_dump(mode="json")
    tree |= {"name": f"{method}-s{seed}", "seed": seed, "rounds": rounds}
    tree["algorithm"]["name"] = method
    if sparsity is not None:
        tree["algorithm"]["pruning"]["sparsity"] = sparsity
    tree["output"]["progress"] = False
    return config_from_dict(tree, source=f"savings variant {method} seed {seed}")


def timed_run(cfg: ExperimentConfig, parent: Path) -> tuple[Path, float]:
    run_dir = new_run(cfg, parent)
    start = time.perf_counter()
    execute(cfg, run_dir, progress=False)
    return run_dir, time.perf_counter() - start


def plan(base: ExperimentConfig, out: Path, budget_s: float, seeds: list[int], rounds: int | None,
         methods: list[str], console: Console) -> dict:
    if rounds is not None:
        return {"rounds": rounds, "rounds_from": "--rounds", "seeds_expected": len(seeds), "probe": None}
    probe_dir, probe_s = timed_run(variant(base, BASELINE, seeds[0], PROBE_ROUNDS), out / "calibration")
    round_s = probe_s / PROBE_ROUNDS
    explore_rounds = exploration_in_rounds(base)
    chosen, expected = choose_rounds(budget_s - probe_s, round_s, explore_rounds, methods, len(seeds), base.rounds)
    console.print(f"probe: {round_s:.1f} s per round -> {chosen} rounds, {expected} seed(s) expected to fit")
    return {"rounds": chosen, "rounds_from": "budget", "seeds_expected": expected,
            "probe": {"run_dir": str(probe_dir), "rounds": PROBE_ROUNDS, "wall_s": probe_s, "round_s": round_s,
                      "exploration_in_rounds": explore_rounds, "max_rounds": base.rounds}}


# ---------------------------------------------------------------- running

def run_seed(base: ExperimentConfig, methods: list[str], seed: int, rounds: int, parent: Path,
             console: Console) -> dict:
    """Every method on one seed; AutoFLIP's measured sparsity is handed to random and magnitude."""
    runs = {}
    autoflip_sparsity = None
    for method in methods:
        sparsity = autoflip_sparsity if method in AT_AUTOFLIP_SPARSITY else None
        cfg = variant(base, method, seed, rounds, sparsity)
        run_dir, wall_s = timed_run(cfg, parent)
        measured = measure_run(read_rounds(run_dir))
        runs[method, seed] = measured | {
            "method": method, "seed": seed, "run_dir": str(run_dir), "config": str(run_dir / "config.yaml"),
            "pruning_sparsity": cfg.algorithm.pruning.sparsity if method != BASELINE else None, "run_wall_s": wall_s,
        }
        if method == AUTOFLIP:
            autoflip_sparsity = 1.0 - measured["final_param_density"]
        acc = measured["final_accuracy"]
        console.print(f"  seed {seed} {method:<22} acc {'n/a' if acc is None else f'{acc:.4f}'}  {wall_s:6.1f} s  {run_dir}")
    return runs


def run_seeds(base: ExperimentConfig, methods: list[str], seeds: list[int], rounds: int, out: Path,
              deadline: float, console: Console) -> tuple[dict, list[int], list[int]]:
    """Seeds in order while the last seed's measured time still fits before the deadline."""
    runs: dict = {}
    done: list[int] = []
    last_seed_s = 0.0
    for seed in seeds:
        if done and time.perf_counter() + last_seed_s > deadline:
            break
        start = time.perf_counter()
        runs |= run_seed(base, methods, seed, rounds, out / "runs", console)
        last_seed_s = time.perf_counter() - start
        done.append(seed)
    return runs, done, [s for s in seeds if s not in done]


def equivalent_command(out: Path, budget_minutes: float, seeds: list[int], rounds: int | None,
                       methods: list[str], config: Path) -> str:
    argv = ["raysim", "bench", "savings", "--budget-minutes", f"{budget_minutes:g}",
            "--seeds", *map(str, seeds), "--methods", *methods, "--out", str(out), "--config", str(config)]
    if rounds is not None:
        argv += ["--rounds", str(rounds)]
    return shlex.join(argv)


def run_savings(out: Path, budget_minutes: float, seeds: list[int], rounds: int | None, methods: list[str] | None,
                base_config: Path | None) -> dict:
    """Run benchmark S into `out` and return what comparison.json holds."""
    if budget_minutes <= 0 or not seeds or (rounds is not None and rounds < 1):
        raise ConfigError("the savings benchmark needs a positive budget, at least one seed and rounds >= 1")
    seeds = list(dict.fromkeys(seeds))
    ordered = order_methods(methods)
    config_path = Path(base_config or SAVINGS_CONFIG).resolve()
    base = load_config(config_path)
    prepare_out(out)
    console = Console()
    started = time.perf_counter()
    deadline = started + 60.0 * budget_minutes

    time_plan = plan(base, out, deadline - started, seeds, rounds, ordered, console)
    runs, done, skipped = run_seeds(base, ordered, seeds, time_plan["rounds"], out, deadline, console)
    per_method = {m: aggregate_method(runs, m, done) for m in ordered}
    curves = {m: mean_curve([read_rounds(Path(runs[m, s]["run_dir"])) for s in done]) for m in ordered}
    result = {
        "benchmark": "S: savings of AutoFLIP against FedAvg",
        "command": equivalent_command(out, budget_minutes, seeds, rounds, ordered, config_path),
        "argv": sys.argv,
        "base_config_path": str(config_path),
        "base_config": base.model_dump(mode="json"),
        "methods": ordered,
        "seeds_requested": seeds,
        "seeds": done,
        "seeds_skipped_for_budget": skipped,
        "rounds": time_plan["rounds"],
        "plan": time_plan | {"budget_s": 60.0 * budget_minutes, "elapsed_s": time.perf_counter() - started},
        "runs": [runs[m, s] for s in done for m in ordered],
        "per_method": per_method,
        "targets": check_targets(per_method),
        "curves": curves,
        "how_measured": HOW_MEASURED,
    }
    write_reports(result, out)
    print_headline(result, console)
    return result


# ---------------------------------------------------------------- reporting

def _si(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.1f} {unit}"


def _with_range(s: dict, fmt) -> str:
    """'mean [min, max]': the spread next to every mean."""
    if s["mean"] is None:
        return "n/a"
    return fmt(s["mean"]) if s["n"] == 1 else f"{fmt(s['mean'])} [{fmt(s['min'])}, {fmt(s['max'])}]"


def _pct(v: float) -> str:
    return f"{v:+.1f} %"


def _points(v: float) -> str:
    return f"{v:+.2f}"


def markdown(result: dict) -> str:
    seeds = ", ".join(map(str, result["seeds"]))
    lines = [
        "# Benchmark S: savings against FedAvg", "",
        f"Command: `{result['command']}`  ",
        f"Seeds: {seeds} ({len(result['seeds'])} of {len(result['seeds_requested'])} requested); rounds: {result['rounds']} "
        f"({result['plan']['rounds_from']}); base config: `{result['base_config_path']}`", "",
        "Every cell is the mean over seeds with [min, max] over seeds; costs include the exploration phase "
        "unless marked `excl.`. Reductions are per seed against FedAvg on the same seed; negative = saving.", "",
        "| method | accuracy (last 3) | executed FLOPs | effective FLOPs | bytes down | bytes up | simulated time |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, agg in result["per_method"].items():
        c = agg["incl_exploration"]
        lines.append(f"| {method} | {_with_range(agg['final_accuracy'], lambda v: f'{v:.4f}')} | "
                     f"{_with_range(c['flops_executed'], lambda v: _si(v, 'FLOP'))} | "
                     f"{_with_range(c['flops_effective'], lambda v: _si(v, 'FLOP'))} | "
                     f"{_with_range(c['bytes_down'], lambda v: _si(v, 'B'))} | {_with_range(c['bytes_up'], lambda v: _si(v, 'B'))} | "
                     f"{_with_range(c['sim_time_s'], lambda v: f'{v:.1f} s')} |")
    lines += ["", "| method | Δ accuracy (points) | executed FLOPs | excl. | effective FLOPs | excl. | bytes | excl. | simulated time | excl. |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for method, agg in result["per_method"].items():
        if method == BASELINE:
            continue
        red = agg["reduction_vs_fedavg_pct"]
        cells = [_with_range(red[scope][key], _pct)
                 for key in ("flops_executed", "flops_effective", "bytes_total", "sim_time_s") for scope in SCOPES]
        lines.append(f"| {method} | {_with_range(agg['accuracy_delta_points'][BASELINE], _points)} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets (AutoFLIP)", ""]
    lines += [f"- {_verdict(t)} {t['target']}: {_target_value(t)}" for t in result["targets"]]
    lines += ["", *[f"![{name}]({name}.png)" for name in PLOTS], ""]
    return "\n".join(lines)


def _verdict(target: dict) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[target["met"]]


def _target_value(target: dict) -> str:
    if target["value"] is None:
        return "n/a"
    return _pct(target["value"]) if target["unit"] == "%" else f"{_points(target['value'])} points"


# name -> (x key of the curves, x label)
PLOTS = {
    "accuracy_vs_round": ("round", "round (0 = exploration)"),
    "accuracy_vs_flops": ("cum_flops_executed", "cumulative executed training FLOPs (incl. exploration)"),
    "accuracy_vs_bytes": ("cum_bytes", "cumulative bytes, down + up (incl. exploration)"),
}


def plot(curves: dict, x_key: str, x_label: str, path: Path, n_seeds: int) -> None:
    # Imported here so that every `raysim` command does not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, curve in curves.items():
        points = [(x, a) for x, a in zip(curve[x_key], curve["accuracy"]) if a is not None]
        if points:
            ax.plot(*zip(*points), marker=".", label=method)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy" + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else " (1 seed)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_reports(result: dict, out: Path) -> None:
    write_result(out, "comparison", result, markdown(result))
    for name, (x_key, x_label) in PLOTS.items():
        plot(result["curves"], x_key, x_label, out / f"{name}.png", len(result["seeds"]))


def print_headline(result: dict, console: Console) -> None:
    """The ratios the benchmark answers, printed last."""
    seeds = ", ".join(map(str, result["seeds"]))
    table = Table(title=escape(f"Against FedAvg, mean [min, max] over seeds {seeds}; {result['rounds']} rounds; "
                               "% change, negative = saving"))
    table.add_column("method")
    table.add_column("Δ accuracy, points", justify="right")
    for label in ("executed FLOPs %", "effective FLOPs %", "bytes down+up %"):
        table.add_column(f"{label}\nincl. / excl. exploration", justify="right")
    signed = lambda v: f"{v:+.1f}"  # noqa: E731  (the unit is in the column header)
    for method, agg in result["per_method"].items():
        if method == BASELINE:
            continue
        red = agg["reduction_vs_fedavg_pct"]
        cells = ["\n".join(_with_range(red[scope][key], signed) for scope in SCOPES)
                 for key in ("flops_executed", "flops_effective", "bytes_total")]
        table.add_row(method, _with_range(agg["accuracy_delta_points"][BASELINE], _points), *map(escape, cells))
    console.print(table)
    autoflip = result["per_method"].get(AUTOFLIP)
    for ref, delta in (autoflip or {}).get("accuracy_delta_points", {}).items():
        console.print(escape(f"AutoFLIP accuracy vs {ref}: {_with_range(delta, _points)} points"))
    style = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]–[/]"}
    for t in result["targets"]:
        console.print(f"{style[t['met']]} " + escape(f"{t['target']}: {_target_value(t)} ({_verdict(t)})"))


# ---------------------------------------------------------------- CLI

def add_savings_parser(which: argparse._SubParsersAction) -> None:
    s = which.add_parser("savings", help="benchmark S: AutoFLIP's savings against FedAvg on Fashion-MNIST")
    s.add_argument("--budget-minutes", type=float, default=30.0, help="wall-clock budget; rounds and seeds are fitted to it (default 30)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run, in order, while the budget lasts (default 0 1 2)")
    s.add_argument("--rounds", type=int, help="fixed rounds per run (default: the most that fit the budget, up to the config's rounds)")
    s.add_argument("--methods", nargs="+", choices=ALGORITHMS, metavar="METHOD",
                   help=f"of {', '.join(ALGORITHMS)} (default: {', '.join(DEFAULT_METHODS)}); fedavg is always run")
    s.add_argument("--out", type=Path, help="output folder, new or empty (default: results/savings-<timestamp>)")
    s.add_argument("--config", type=Path, help=f"base experiment config (default: the embedded {SAVINGS_CONFIG.name})")


def savings_main(args: argparse.Namespace) -> int:
    out = args.out or Path("results") / f"savings-{time.strftime('%Y%m%d-%H%M%S')}"
    run_savings(out, args.budget_minutes, args.seeds, args.rounds, args.methods, args.config)
    return 0
