"""Benchmark E's numbers and files: medians and ratios per way (to the compute limit, the
headline, and to the floor), the target's verdict, engine.json / engine.md, the plot, the
printed table and headline."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raysim.benchmarks.common import median, write_result
from raysim.benchmarks.engine_plan import RAY_WAYS, TARGETS, WAYS, WORKLOADS
from raysim.benchmarks.verdict import rounds_problems, verdict, verdict_text

HOW_MEASURED = {
    "round_s": "time.perf_counter around configure/run/aggregate (backends) or the plain loop plus averaging (floor), "
               "per round, on this machine; the first round of each way is a warm-up, excluded",
    "limit_round_s": "the compute limit: one forked process per core, one torch thread each, one resident model and "
                     "SGD optimizer each for the whole run, the cohort split evenly across them; per client only the "
                     "copy_ of the global weights in, the SGD steps and the weighted delta copied out are timed, "
                     "inside the process; a round's limit time is the largest per-process busy time (ways.limit."
                     "process_busy_s has each process's, per measured round)",
    "round_s_median": "median over the measured rounds",
    "updates_per_s": "clients per round / median round time",
    "throughput_vs_limit": "the way's client updates/s / the compute limit's, measured in the same command",
    "ratio_to_floor": "median round time of the way / median round time of the floor, measured in the same command",
    "ray_startup_s": "RayBackend construction until every worker answered (not in any round time)",
    "paths": "ray trains each worker's clients one at a time; ray_vectorized (backend.vectorize) trains each call's "
             "clients as one torch.func.vmap computation, and a round where any client fell back to one at a time "
             "is an error, so its numbers are the vectorised path's",
    "same_work": "the same sampled clients per round (seeded), data, batch size, epochs and optimizer in every way; "
                 "the floor and the limit also shuffle each client's rows from the same per-client seed",
    "target": "each Ray path's throughput_vs_limit, judged only when every way measured the rounds asked for, the floor was no "
              "slower than the in-process backend (which does the floor's work plus the engine's) and the limit no "
              "slower than the floor; otherwise 'not judged' and why",
}


def sanity_problems(ways: dict, asked: int) -> list[str]:
    """Why the target cannot be judged: rounds missing, a floor that is no floor, a limit that is no limit."""
    problems = [p for way in WAYS for p in rounds_problems(ways[way]["round_s"], asked, way)]
    if problems:
        return problems
    floor, engine = ways["floor"]["round_s_median"], ways["inprocess"]["round_s_median"]
    limit = ways["limit"]["round_s_median"]
    if floor > engine:
        problems.append(f"the sequential floor ({floor:.3f} s a round) was slower than the in-process backend "
                        f"({engine:.3f} s), which does the same work and more: no floor (a busy machine?); rerun "
                        "when the machine is quiet")
    if limit > floor:
        problems.append(f"the compute limit ({limit:.3f} s a round) was slower than the plain floor loop "
                        f"({floor:.3f} s): no limit (a busy machine, or fewer free cores than processes?); rerun "
                        "when the machine is quiet")
    return problems


def summarise(raw: dict, asked: int) -> dict:
    """One workload's result: per way the measured rounds, median and ratios; the target's verdict."""
    times, cohort = raw["times"], raw["clients_per_round"]
    ways = {}
    for way in WAYS:
        measured = times[way][1:]
        m = median(measured) if measured else None
        ways[way] = {"round_s_median": m, "round_s": measured, "warmup_round_s": times[way][0],
                     "updates_per_s": cohort / m if m else None}
    ways["limit"]["process_busy_s"] = raw["limit_busy_s"][1:]
    floor, limit = ways["floor"]["round_s_median"], ways["limit"]["updates_per_s"]
    for way in WAYS:
        m, rate = ways[way]["round_s_median"], ways[way]["updates_per_s"]
        ways[way]["ratio_to_floor"] = m / floor if m is not None and floor else None
        ways[way]["throughput_vs_limit"] = rate / limit if rate is not None and limit else None
    name = raw["workload"]
    target, problems = TARGETS[name], sanity_problems(ways, asked)
    targets = {}
    for way in RAY_WAYS:
        ratio = ways[way]["throughput_vs_limit"]
        judged = verdict(ratio is not None and ratio >= target, problems)
        targets[way] = {"throughput_vs_limit": ratio, "met": judged["met"], "verdict": judged["verdict"],
                        "not_judged_because": judged["not_judged_because"]}
    return {
        "workload": name, "description": WORKLOADS[name][0], "config": raw["config"], "clients_per_round": cohort,
        "measured_rounds_asked": asked, "ways": ways, "ray_workers": raw["ray_workers"],
        "ray_startup_s": raw["ray_startup_s"], "ray_vectorized_startup_s": raw["ray_vectorized_startup_s"],
        "floor_torch_threads": raw["floor_torch_threads"], "limit_processes": raw["limit_processes"],
        "target_ray_vs_limit_at_least": target, "targets": targets,
    }


def _verdict_of(w: dict, way: str) -> str:
    return verdict_text(w["targets"][way])


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{suffix}"


def _target_text(w: dict, way: str) -> str:
    return f">= {w['target_ray_vs_limit_at_least']:.2f} of the limit: {_verdict_of(w, way)}"


def markdown(result: dict) -> str:
    first = result["workloads"][0]
    lines = [
        "# Benchmark E: engine efficiency against the compute limit", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['cores']} cores; Ray backend with {result['cores']} workers of 1 CPU each; compute limit "
        f"with {first['limit_processes']} processes of 1 thread; floor with torch's default "
        f"{first['floor_torch_threads']} threads.", "",
        "| workload | way | median round (s) | client updates/s | throughput vs limit | ratio to floor | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in result["workloads"]:
        for way in WAYS:
            m = w["ways"][way]
            lines.append(f"| {w['workload']} | {way} | {_num(m['round_s_median'], '.3f')} | "
                         f"{_num(m['updates_per_s'], '.1f')} | {_num(m['throughput_vs_limit'], '.2f')} | "
                         f"{_num(m['ratio_to_floor'], '.2f', 'x')} | {_target_text(w, way) if way in RAY_WAYS else ''} |")
    lines += ["", "How measured:"] + [f"- {k}: {v}" for k, v in result["how_measured"].items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """One panel per workload: E1's and E2's throughputs differ 30-fold, so a shared axis hides E2."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = result["workloads"]
    fig = Figure(figsize=(3.6 * len(workloads) + 0.6, 4))
    FigureCanvasAgg(fig)
    for i, w in enumerate(workloads):
        ax = fig.add_subplot(1, len(workloads), i + 1)
        rates = [w["ways"][way]["updates_per_s"] or 0.0 for way in WAYS]
        bars = ax.bar([way.replace("_", "\n") for way in WAYS], rates,
                      color=["tab:blue" if way in RAY_WAYS else "tab:gray" for way in WAYS])
        ax.axhline(w["target_ray_vs_limit_at_least"] * (w["ways"]["limit"]["updates_per_s"] or 0.0),
                   color="tab:red", linestyle="--", linewidth=1,
                   label=f"target: {w['target_ray_vs_limit_at_least']:.2f} x limit")
        ax.bar_label(bars, fmt="%.1f", fontsize="small")
        plain, vec = (w["targets"][way]["throughput_vs_limit"] for way in RAY_WAYS)
        ax.set_title(f"{w['workload']}: Ray = {_num(plain, '.2f')} (plain), {_num(vec, '.2f')} (vectorised)\n"
                     "of the limit", fontsize="medium")
        ax.set_ylabel("client updates per second")
        ax.set_ylim(0, max(rates + [1e-9]) * 1.3)  # room above the bars for the legend
        ax.legend(fontsize="small", loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Benchmark E (median over measured rounds)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_reports(result: dict, out: Path) -> None:
    write_result(out, "engine", result, markdown(result))
    plot(result, out / "engine.png")


def print_report(result: dict, out: Path, console: Console) -> None:
    """The table, then the headline ratios last."""
    table = Table(title=f"Benchmark E ({result['cores']} cores) -> {out}")
    for col in ("workload", "way", "median round s", "updates/s", "vs limit", "ratio to floor"):
        table.add_column(col, justify="right")
    for w in result["workloads"]:
        for way in WAYS:
            m = w["ways"][way]
            table.add_row(w["workload"], way, _num(m["round_s_median"], ".3f"), _num(m["updates_per_s"], ".1f"),
                          _num(m["throughput_vs_limit"], ".2f"), _num(m["ratio_to_floor"], ".2f", "x"))
    console.print(table)
    for w in result["workloads"]:
        limit, floor = w["ways"]["limit"], w["ways"]["floor"]
        for way, path in zip(RAY_WAYS, ("one client at a time", "vectorised"), strict=True):
            ray = w["ways"][way]
            console.print(escape(
                f"{w['workload']}: Ray backend ({path}) throughput = "
                f"{_num(w['targets'][way]['throughput_vs_limit'], '.2f')} of the compute limit (target "
                f"{_target_text(w, way)}); {_num(ray['updates_per_s'], '.1f')} vs {_num(limit['updates_per_s'], '.1f')} "
                f"updates/s; the floor loop {_num(floor['updates_per_s'], '.1f')} (round time "
                f"{_num(ray['ratio_to_floor'], '.2f', 'x')} the floor's)"))
