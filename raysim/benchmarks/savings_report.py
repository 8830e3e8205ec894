"""Benchmark S's result files: comparison.md, the Pareto plots, the printed headline."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from raysim.benchmarks.common import write_result
from raysim.benchmarks.savings_arms import BASELINE, LEVELS, SWEEP_METHODS, autoflip_label
from raysim.benchmarks.savings_measure import LAST_EVALS, last_mean


def _si(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.1f} {unit}"


def _with_range(s: dict | None, fmt) -> str:
    """'mean [min, max]': the spread beside every mean."""
    if not s or s["mean"] is None:
        return "n/a"
    return fmt(s["mean"]) if s["n"] == 1 else f"{fmt(s['mean'])} [{fmt(s['min'])}, {fmt(s['max'])}]"


def _pct(v: float) -> str:
    return f"{v:+.1f} %"


def _points(v: float) -> str:
    return f"{v:+.2f}"


def _ratio(v: float) -> str:
    return f"{v:.2f}"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def _check(c: dict) -> str:
    value = "n/a" if c["value"] is None else f"{c['value']:+.3g}"
    return f"{c['what']} = {value} (needs {c['op']} {c['threshold']:g})"


def markdown(result: dict) -> str:
    arms = result["per_arm"]
    lines = [
        "# Benchmark S: AutoFLIP against FedAvg and cost-matched baselines", "",
        f"Command: `{result['command']}`  ",
        f"Seeds: {', '.join(map(str, result['seeds']))}; rounds: {result['rounds']} ({result['plan']['rounds_from']}); "
        f"wall time {result['plan']['elapsed_s'] / 60:.1f} min; base config: `{result['base_config_name']}`", "",
        f"Accuracy is the mean of the last {LAST_EVALS} evaluations of the global test set. Every cell is the mean "
        "over seeds with [min, max]; differences are paired per seed against FedAvg on the same seed. Costs include "
        "the exploration phase; negative = saving.", "",
        f"FedAvg's gain over its last {LAST_EVALS} evaluations against the {LAST_EVALS} before: "
        f"{_with_range(arms[BASELINE]['plateau_gain_points'], _points)} points (how close to its plateau it got).", "",
    ]
    coverage = result.get("explorer_label_coverage") or {}
    if coverage:
        cells = ", ".join(f"seed {s}: {c['labels_covered']} of {c['num_classes']} labels ({c['explorers']} explorers)"
                          for s, c in coverage.items())
        lines += [f"Explorers' data (read from the partition for this report only): {cells}.", ""]
    lines += [
        "| arm | accuracy | Δ acc vs FedAvg (points) | executed FLOPs | effective FLOPs | bytes | iso-cost Δ (eff. FLOPs) "
        "| iso-cost Δ (bytes) | prunable density | client train time / FedAvg | executed FLOPs / FedAvg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, agg in arms.items():
        if label == BASELINE:
            c = agg["incl_exploration"]
            lines.append(f"| {label} | {_with_range(agg['final_accuracy'], lambda v: f'{v:.4f}')} | 0 | "
                         f"{_with_range(c['flops_executed'], lambda v: _si(v, 'FLOP'))} | "
                         f"{_with_range(c['flops_effective'], lambda v: _si(v, 'FLOP'))} | "
                         f"{_with_range(c['bytes_total'], lambda v: _si(v, 'B'))} | | | 1 | 1 | 1 |")
            continue
        red = agg["reduction_vs_fedavg_pct"]["incl_exploration"]
        iso = agg["iso_cost_vs_fedavg_points"]
        lines.append(
            f"| {label} | {_with_range(agg['final_accuracy'], lambda v: f'{v:.4f}')} | "
            f"{_with_range(agg['accuracy_vs_fedavg_points'], _points)} | {_with_range(red['flops_executed'], _pct)} | "
            f"{_with_range(red['flops_effective'], _pct)} | {_with_range(red['bytes_total'], _pct)} | "
            f"{_with_range(iso['flops_effective'], _points)} | {_with_range(iso['bytes_total'], _points)} | "
            f"{_with_range(agg['final_prunable_density'], _ratio)} | {_with_range(agg['client_train_wall_ratio'], _ratio)} | "
            f"{_with_range(agg['flops_executed_ratio'], _ratio)} |")
    lines += ["", "Paired accuracy differences between arms (points, mean [min, max] over seeds):", ""]
    lines += [f"- {d['arm']} - {d['reference']}: {_with_range(d, _points)}" for d in result["versus"]]
    lines += ["", "## Targets", ""]
    if result.get("targets_not_judged_because"):
        lines.append(f"Not judged: {result['targets_not_judged_because']} (this run's base config: "
                     f"`{result['base_config_name']}`).")
    for t in result["targets"]:
        lines.append(f"- **{t['target']} {_verdict(t['met'])}**: {t['text']}.")
        lines += [f"  - {_check(c)}: {_verdict(c['met'])}" for c in t["checks"]]
    lines += ["", *[f"![{name}]({name}.png)" for name in PLOTS], ""]
    return "\n".join(lines)


# name -> (cost key of the curves, x label)
PLOTS = {
    "pareto_flops": ("flops_effective", "cumulative effective training FLOPs (incl. exploration)"),
    "pareto_bytes": ("bytes_total", "cumulative bytes, down + up (incl. exploration)"),
}


def _fedavg_reference(curves: list[dict], key: str) -> tuple[list[float], list[float]]:
    """FedAvg's own trailing-mean accuracy along its cumulative cost, mean over seeds."""
    xs, ys = [], []
    for i in range(len(curves[0]["round"])):
        accs = []
        for curve in curves:
            seen = [a for a in curve["accuracy"][: i + 1] if a is not None]
            if seen:
                accs.append(last_mean(seen))
        if len(accs) == len(curves):
            xs.append(sum(c[f"cum_{key}"][i] for c in curves) / len(curves))
            ys.append(sum(accs) / len(accs))
    return xs, ys


def pareto_plot(result: dict, key: str, x_label: str, path: Path) -> None:
    # Imported here so that every `raysim` command does not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms, runs = result["per_arm"], result["runs"]
    fig = Figure(figsize=(10.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fed_curves = [r["curve"] for r in runs if r["label"] == BASELINE]
    ax.plot(*_fedavg_reference(fed_curves, key), color="black", linestyle="--", linewidth=1,
            label=f"FedAvg along its rounds (last-{LAST_EVALS} mean)")

    def point(label: str) -> tuple[float, float, float, float] | None:
        agg = arms.get(label)
        if not agg or agg["final_accuracy"]["mean"] is None:
            return None
        acc = agg["final_accuracy"]
        return agg["incl_exploration"][key]["mean"], acc["mean"], acc["mean"] - acc["min"], acc["max"] - acc["mean"]

    for method in SWEEP_METHODS:
        label_of = (lambda lv: autoflip_label(lv)) if method == "autoflip" else (lambda lv, m=method: f"{m}@{lv}")
        pts = [(lv, point(label_of(lv))) for lv in LEVELS]
        pts = [(lv, p) for lv, p in pts if p]
        if not pts:
            continue
        line = ax.errorbar([p[0] for _, p in pts], [p[1] for _, p in pts],
                           yerr=[[p[2] for _, p in pts], [p[3] for _, p in pts]], marker="o", capsize=3,
                           label=f"{method} (sweep)")
        for lv, p in pts:
            ax.annotate(lv, (p[0], p[1]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=line[0].get_color())
    markers = iter("s^vD<>pX*")
    for label in arms:
        if label == BASELINE or any(label.startswith(f"{m}@") for m in SWEEP_METHODS):
            continue
        p = point(label)
        if p:
            ax.errorbar([p[0]], [p[1]], yerr=[[p[2]], [p[3]]], marker=next(markers), linestyle="none", capsize=3,
                        label=label)
    fed = point(BASELINE)
    if fed:
        ax.errorbar([fed[0]], [fed[1]], yerr=[[fed[2]], [fed[3]]], marker="*", markersize=12, color="black",
                    linestyle="none", capsize=3, label="fedavg (end of run)")
    ax.set_xscale("log")
    ax.set_xlabel(x_label + ", log scale")
    ax.set_ylabel(f"test accuracy, last-{LAST_EVALS} mean\n(mean over {len(result['seeds'])} seeds, bars: min-max)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_reports(result: dict, out: Path) -> None:
    write_result(out, "comparison", result, markdown(result))
    for name, (key, x_label) in PLOTS.items():
        pareto_plot(result, key, x_label, out / f"{name}.png")


def print_headline(result: dict, console: Console) -> None:
    """The answers, printed last: each target met or missed, with its numbers."""
    p1 = result["per_arm"].get(autoflip_label("P1"))
    if p1:
        red = p1["reduction_vs_fedavg_pct"]["incl_exploration"]
        console.print(escape(
            f"autoflip@P1 vs FedAvg over seeds {result['seeds']}: accuracy {_with_range(p1['accuracy_vs_fedavg_points'], _points)} "
            f"points, executed FLOPs {_with_range(red['flops_executed'], _pct)}, effective FLOPs "
            f"{_with_range(red['flops_effective'], _pct)}, bytes {_with_range(red['bytes_total'], _pct)}"))
    if result.get("targets_not_judged_because"):
        console.print(escape(f"Targets not judged: {result['targets_not_judged_because']} "
                             f"(base config: {result['base_config_name']})"))
    style = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]–[/]"}
    for t in result["targets"]:
        console.print(f"{style[t['met']]} " + escape(f"{t['target']} ({_verdict(t['met'])}): {t['text']}"))
        for c in t["checks"]:
            console.print("    " + escape(f"{_check(c)}: {_verdict(c['met'])}"))
