"""Benchmark E's numbers and files: medians and ratios per way, the target's verdict,
engine.json / engine.md, the plot, the printed table and headline."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raysim.benchmarks.common import bar_plot, median, write_result
from raysim.benchmarks.engine_plan import TARGETS, WAYS, WORKLOADS
from raysim.benchmarks.verdict import rounds_problems, verdict, verdict_text

HOW_MEASURED = {
    "round_s": "time.perf_counter around configure/run/aggregate (backends) or the plain loop plus averaging (floor), "
               "per round, on this machine; the first round of each way is a warm-up, excluded",
    "round_s_median": "median over the measured rounds",
    "updates_per_s": "clients per round / median round time",
    "ratio_to_floor": "median round time of the way / median round time of the floor, measured in the same command",
    "ray_startup_s": "RayBackend construction until every worker answered (not in any round time)",
    "same_work": "the same sampled clients per round (seeded), data, batch size, epochs and optimizer in every way",
    "target": "judged only when every way measured the rounds asked for and the floor was no slower than the "
              "in-process backend (which does the floor's work plus the engine's); otherwise 'not judged' and why",
}


def sanity_problems(ways: dict, asked: int) -> list[str]:
    """Why the ratios cannot be judged: rounds missing, or a floor that is no floor."""
    problems = [p for way in WAYS for p in rounds_problems(ways[way]["round_s"], asked, way)]
    if problems:
        return problems
    floor, engine = ways["floor"]["round_s_median"], ways["inprocess"]["round_s_median"]
    if floor > engine:
        problems.append(f"the sequential floor ({floor:.3f} s a round) was slower than the in-process backend "
                        f"({engine:.3f} s), which does the same work and more: no floor (a busy machine?); rerun "
                        "when the machine is quiet")
    return problems


def summarise(raw: dict, asked: int) -> dict:
    """One workload's result: per way the measured rounds, median and ratio; the target's verdict."""
    times, cohort = raw["times"], raw["clients_per_round"]
    ways = {}
    for way in WAYS:
        measured = times[way][1:]
        m = median(measured) if measured else None
        ways[way] = {"round_s_median": m, "round_s": measured, "warmup_round_s": times[way][0],
                     "updates_per_s": cohort / m if m else None}
    floor = ways["floor"]["round_s_median"]
    for way in WAYS:
        m = ways[way]["round_s_median"]
        ways[way]["ratio_to_floor"] = m / floor if m is not None and floor else None
    name = raw["workload"]
    ratio, target = ways["ray"]["ratio_to_floor"], TARGETS[name]
    judged = verdict(ratio is not None and ratio <= target, sanity_problems(ways, asked))
    return {
        "workload": name, "description": WORKLOADS[name][0], "config": raw["config"], "clients_per_round": cohort,
        "measured_rounds_asked": asked, "ways": ways, "ray_workers": raw["ray_workers"],
        "ray_startup_s": raw["ray_startup_s"], "floor_torch_threads": raw["floor_torch_threads"],
        "target_ray_ratio_at_most": target, "target_met": judged["met"], "target_verdict": judged["verdict"],
        "target_not_judged_because": judged["not_judged_because"],
    }


def _verdict_of(w: dict) -> str:
    return verdict_text({"met": w["target_met"], "verdict": w["target_verdict"],
                         "not_judged_because": w["target_not_judged_because"]})


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{suffix}"


def markdown(result: dict) -> str:
    lines = [
        "# Benchmark E: engine efficiency against the compute floor", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['cores']} cores; Ray backend with {result['cores']} workers of 1 CPU each; "
        f"floor with torch's default {result['workloads'][0]['floor_torch_threads']} threads.", "",
        "| workload | way | median round (s) | client updates/s | ratio to floor | target |",
        "|---|---|---|---|---|---|",
    ]
    for w in result["workloads"]:
        for way in WAYS:
            m = w["ways"][way]
            target = f"<= {w['target_ray_ratio_at_most']:.1f}x: {_verdict_of(w)}" if way == "ray" else ""
            lines.append(f"| {w['workload']} | {way} | {_num(m['round_s_median'], '.3f')} | "
                         f"{_num(m['updates_per_s'], '.1f')} | {_num(m['ratio_to_floor'], '.2f', 'x')} | {target} |")
    lines += ["", "How measured:"] + [f"- {k}: {v}" for k, v in result["how_measured"].items()]
    return "\n".join(lines) + "\n"


def write_reports(result: dict, out: Path) -> None:
    write_result(out, "engine", result, markdown(result))
    labels = [f"{w['workload']} {way}" for w in result["workloads"] for way in WAYS]
    bar_plot(labels, [w["ways"][way]["updates_per_s"] or 0.0 for w in result["workloads"] for way in WAYS],
             "client updates per second", "Benchmark E (median over measured rounds)", out / "engine.png")


def print_report(result: dict, out: Path, console: Console) -> None:
    """The table, then the headline ratios last."""
    table = Table(title=f"Benchmark E ({result['cores']} cores) -> {out}")
    for col in ("workload", "way", "median round s", "updates/s", "ratio to floor"):
        table.add_column(col, justify="right")
    for w in result["workloads"]:
        for way in WAYS:
            m = w["ways"][way]
            table.add_row(w["workload"], way, _num(m["round_s_median"], ".3f"), _num(m["updates_per_s"], ".1f"),
                          _num(m["ratio_to_floor"], ".2f", "x"))
    console.print(table)
    for w in result["workloads"]:
        ray, floor = w["ways"]["ray"], w["ways"]["floor"]
        console.print(escape(
            f"{w['workload']}: Ray backend round time = {_num(ray['ratio_to_floor'], '.2f', 'x')} the sequential floor "
            f"(target <= {w['target_ray_ratio_at_most']:.1f}x: {_verdict_of(w)}); "
            f"{_num(ray['updates_per_s'], '.1f')} vs {_num(floor['updates_per_s'], '.1f')} updates/s"))
