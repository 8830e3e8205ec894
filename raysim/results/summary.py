"""summary.json and the closing table: totals over the round log, each labelled with how it was measured."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raysim.results.health import divergence_warnings
from raysim.results.run_dir import write_atomic

MEASURED = {
    "accuracy": "top-1 on the global test set; last_3 = mean of the last 3 evaluations",
    "flops_executed": "torch.utils.flop_counter on the model each client ran (forward+backward) x examples processed",
    "flops_effective": "executed FLOPs per layer scaled by that layer's weight density",
    "bytes": "length of the real encoded payloads (safetensors, optional zstd)",
    "sim_time_s": "simulated clock: FLOPs/throughput + bytes/bandwidth + latency of each device profile; round = slowest included client",
    "client_train_wall_s": "time.perf_counter around each client's training (client_update) on its worker, summed over the round's clients",
    "wall_time_s": "time.perf_counter around each round on this machine (evaluation and worker start-up excluded)",
    "startup_s": "time.perf_counter from building the backend until every worker answered (Ray: actors started, "
                 "dataset mapped, runners built), in this process; in no round's wall_time_s",
    "client_updates_per_s": "clients done / the rounds' wall_time_s (start-up excluded)",
    "totals": "sums over rounds.parquet, including AutoFLIP's exploration phase (round 0) where there is one",
}


def _evaluated(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]


def summarize(rows: list[dict], run_dir: Path, algorithm: str, startup_s: float | None = None,
              stopped: str | None = None) -> dict:
    """`startup_s`: the backend's start-up, apart from the rounds; `stopped`: why the run
    ended before its last round, if it did."""
    acc = _evaluated(rows, "accuracy")
    last3 = acc[-3:]
    wall = sum(r["wall_time_s"] for r in rows)
    done = sum(r["clients_done"] for r in rows)
    totals = {
        key: sum(r[key] for r in rows)
        for key in ("flops_executed", "flops_effective", "bytes_down", "bytes_up", "sim_time_s", "wall_time_s",
                    "clients_done", "clients_dropped", "clients_failed")
    }
    return {
        "run_dir": str(run_dir),
        "algorithm": algorithm,
        "rounds": sum(r.get("phase", "train") == "train" for r in rows),  # the exploration row is not a round
        "final_accuracy": acc[-1] if acc else None,
        "accuracy_last_3_mean": statistics.fmean(last3) if last3 else None,
        "accuracy_last_3_spread": (max(last3) - min(last3)) if last3 else None,
        "final_client_accuracy": (_evaluated(rows, "client_accuracy") or [None])[-1],
        "client_updates_per_s": done / wall if wall > 0 else None,
        "startup_s": startup_s,
        "totals": totals,
        "warnings": divergence_warnings(rows),
        "stopped_early": stopped,
        "how_measured": MEASURED,
    }


def write_summary(summary: dict, run_dir: Path) -> None:
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2).encode())


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def print_summary(summary: dict, console: Console | None = None) -> None:
    t = summary["totals"]
    table = Table(title=f"{summary['algorithm']}: {summary['rounds']} rounds  ->  {summary['run_dir']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    table.add_row("final accuracy", fmt(summary["final_accuracy"]))
    table.add_row("accuracy, mean of last 3 evals", fmt(summary["accuracy_last_3_mean"]) + f" (spread {fmt(summary['accuracy_last_3_spread'])})")
    table.add_row("clients done / dropped / failed", f"{t['clients_done']} / {t['clients_dropped']} / {t['clients_failed']}")
    table.add_row("executed training FLOPs", _si(t["flops_executed"], "FLOP"))
    table.add_row("effective training FLOPs", _si(t["flops_effective"], "FLOP"))
    table.add_row("bytes down / up", f"{_si(t['bytes_down'], 'B')} / {_si(t['bytes_up'], 'B')}")
    table.add_row("simulated time", f"{t['sim_time_s']:.1f} s")
    table.add_row("wall time (rounds)", f"{t['wall_time_s']:.1f} s")
    if summary.get("startup_s") is not None:
        table.add_row("worker start-up (not in rounds)", f"{summary['startup_s']:.1f} s")
    ups = summary["client_updates_per_s"]
    table.add_row("client updates per second", "n/a" if ups is None else f"{ups:.1f}")
    console = console or Console()
    console.print(table)
    warnings = summary.get("warnings") or []
    for w in warnings[:5]:
        console.print(f"[bold yellow]warning:[/] diverged at {escape(w)}")
    if len(warnings) > 5:
        console.print(f"[bold yellow]warning:[/] ... {len(warnings) - 5} more diverged rounds (summary.json)")
    if summary.get("stopped_early"):
        console.print(f"[bold]stopped early:[/] {escape(summary['stopped_early'])}")
