"""Benchmark C's targets and files: each target's verdict, scale.json / scale.md, the memory
plot, the printed table and headline."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raysim.benchmarks.common import bar_plot, write_result
from raysim.benchmarks.scale_plan import (
    MEMORY_GROWTH_TARGET,
    ROUND_TARGET_COHORT,
    ROUND_TARGET_S,
    SETUP_TARGET_BYTES,
    SETUP_TARGET_S,
)
from raysim.benchmarks.verdict import rounds_problems, verdict, verdict_text

HOW_MEASURED = {
    "round_s": "time.perf_counter around configure/run/aggregate of a FedAvg round on the Ray backend (one worker "
               "per core), after one warm-up round; the median over measured rounds is reported",
    "driver_peak_rss_rounds_bytes": "peak resident memory of the driver process (psutil, sampled every 5 ms) while "
                                    "the rounds ran; each cohort in a fresh driver process",
    "driver_peak_growth": "peak at the largest cohort / peak at the smallest cohort - 1 (the target is on this)",
    "driver_peak_rss_increase_rounds_bytes": "the same peak minus the driver's memory when the rounds began",
    "setup_s": "time.perf_counter around building the population: its data (row counts per client and the global "
               "test set; no rows are resident, each client's rows are generated on the worker from its own seed) "
               "and its device profiles",
    "setup_rss_increase_bytes": "peak resident memory during set-up minus before it (sampled)",
    "stretch": "a fresh driver sets up the stretch population as above, then draws one round's availability "
               "(Population.available) and samples the cohort from the clients online (sample_s, "
               "sample_rss_increase_bytes: time and peak memory of both); no training, no target",
    "targets": "a target on rounds is judged only when each of its points measured the rounds asked for; memory "
               "growth needs two cohorts at least; otherwise 'not judged' and why",
}


def _mb(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def _target(name: str, value: str, met: bool, problems: list[str]) -> dict:
    return {"name": name, "value": value, **verdict(met, problems)}


def _points_problems(points: list[dict], asked: int) -> list[str]:
    return [p for point in points for p in rounds_problems(point["round_s"], asked, f"{point['cohort']:,} clients")]


def targets(scenarios: dict, asked_rounds: int) -> list[dict]:
    out = []
    for name, s in scenarios.items():
        points = s["points"]
        first, last = points[0], points[-1]
        growth = last["driver_peak_rss_rounds_bytes"] / first["driver_peak_rss_rounds_bytes"] - 1.0
        problems = _points_problems(points, asked_rounds)
        if len(points) < 2:
            problems.append("one cohort only: growth needs two")
        out.append(_target(f"{name}: driver peak memory growth {first['cohort']:,} -> {last['cohort']:,} "
                           f"clients/round <= {MEMORY_GROWTH_TARGET:.0%}", f"{growth:+.1%}",
                           growth <= MEMORY_GROWTH_TARGET, problems))
        big = [p for p in points if p["cohort"] >= ROUND_TARGET_COHORT]
        if name == "logreg" and big:
            p = big[-1]
            out.append(_target(f"logreg: a {p['cohort']:,}-client round <= {ROUND_TARGET_S:.0f} s",
                               f"{p['round_s_median']:.1f} s", p["round_s_median"] <= ROUND_TARGET_S,
                               _points_problems([p], asked_rounds)))
        setup_s = max(p["setup_s"] for p in points)
        setup_bytes = max(p["setup_rss_increase_bytes"] for p in points)
        out.append(_target(f"{name}: population set-up <= {SETUP_TARGET_S:.0f} s and <= "
                           f"{SETUP_TARGET_BYTES / 2**30:.0f} GiB",
                           f"{setup_s:.1f} s, {_mb(setup_bytes)}",
                           setup_s <= SETUP_TARGET_S and setup_bytes <= SETUP_TARGET_BYTES, []))
    return out


def markdown(result: dict) -> str:
    lines = [
        "# Benchmark C: scale", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['cores']} cores; Ray backend with {result['cores']} workers of 1 CPU; population "
        f"{result['population']:,} clients.  ",
        "Data: LEAF Synthetic, not resident (`data.synthetic.resident: false`): the driver and the object store hold "
        "two counts per client; each client's rows are generated on the worker that runs it, from its own seed.", "",
        "Training path: `vectorized` yes means backend.vectorize (each call's clients trained as one vmap'd "
        "computation; a round where any client fell back is an error), no means one client at a time.", "",
        "| scenario | clients/round | vectorized | median round (s) | updates/s | driver peak RSS (rounds) |"
        " increase during rounds | set-up (s) | set-up memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["scenarios"].items():
        for p in s["points"]:
            lines.append(f"| {name} ({p['model_mb']:.2f} MB model) | {p['cohort']:,} | "
                         f"{'yes' if p.get('vectorized') else 'no'} | {p['round_s_median']:.2f} | "
                         f"{p['updates_per_s']:.0f} | {_mb(p['driver_peak_rss_rounds_bytes'])} | "
                         f"{_mb(p['driver_peak_rss_increase_rounds_bytes'])} | {p['setup_s']:.1f} | "
                         f"{_mb(p['setup_rss_increase_bytes'])} |")
    stretch = result.get("stretch")
    if stretch:
        lines += ["", f"Stretch (no target): {stretch_text(stretch)}"]
    lines += ["", "Targets:"] + [f"- {t['name']}: {t['value']} ({verdict_text(t)})" for t in result["targets"]]
    lines += ["", "How measured:"] + [f"- {k}: {v}" for k, v in result["how_measured"].items()]
    return "\n".join(lines) + "\n"


def stretch_text(s: dict) -> str:
    return (f"{s['population']:,} clients set up in {s['setup_s']:.1f} s and {_mb(s['setup_rss_increase_bytes'])}; "
            f"one round's availability and a {s['sampled']:,}-client sample of the {s['online']:,} online in "
            f"{s['sample_s']:.2f} s and {_mb(s['sample_rss_increase_bytes'])}; driver peak "
            f"{_mb(s['driver_maxrss_process_bytes'])}")


def write_reports(result: dict, out: Path) -> None:
    write_result(out, "scale", result, markdown(result))
    scenarios = result["scenarios"]
    labels = [f"{n} {p['cohort']:,}" for n, s in scenarios.items() for p in s["points"]]
    bar_plot(labels, [p["driver_peak_rss_rounds_bytes"] / 2**20 for s in scenarios.values() for p in s["points"]],
             "driver peak RSS during rounds (MiB)", "Benchmark C: driver memory by cohort", out / "scale_memory.png")


def print_report(result: dict, out: Path, console: Console) -> None:
    """The table, then the targets last."""
    table = Table(title=f"Benchmark C ({result['cores']} cores, population {result['population']:,}) -> {out}")
    for col in ("scenario", "clients/round", "median round s", "updates/s", "driver peak", "increase"):
        table.add_column(col, justify="right")
    for name, s in result["scenarios"].items():
        for p in s["points"]:
            table.add_row(name, f"{p['cohort']:,}", f"{p['round_s_median']:.2f}", f"{p['updates_per_s']:.0f}",
                          _mb(p["driver_peak_rss_rounds_bytes"]), _mb(p["driver_peak_rss_increase_rounds_bytes"]))
    console.print(table)
    if result.get("stretch"):
        console.print(escape(f"stretch (no target): {stretch_text(result['stretch'])}"))
    for t in result["targets"]:
        console.print(escape(f"{t['name']}: {t['value']} ({verdict_text(t)})"))
