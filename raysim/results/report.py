"""`raysim report RUN [RUN ...] [--out DIR]`: several run folders compared in one table
(printed, and written as Markdown and JSON) and one set of plots, one line per run."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from raysim.config import ConfigError
from raysim.results.plots import PLOT_FILES, Curves, draw_plots
from raysim.results.round_log import ROUNDS_FILE, read_rounds
from raysim.results.run_dir import create_run_dir, write_atomic
from raysim.results.summary import MEASURED, _si, summarize

CONFIG_FILE = "config.yaml"  # as raysim.experiment writes it (not imported: that pulls in torch and every plug-in)
DEFAULT_PARENT = Path("reports")
COLUMNS = {  # key -> heading
    "rounds": "rounds",
    "final_accuracy": "final accuracy",
    "accuracy_last_3_mean": "mean of last 3 evals",
    "flops_executed": "executed FLOPs",
    "flops_effective": "effective FLOPs",
    "bytes": "bytes down+up",
    "sim_time_s": "simulated time",
    "wall_time_s": "wall time",
}


@dataclass(frozen=True)
class RunFolder:
    path: Path
    name: str  # the config's `name`
    algorithm: str
    rows: list[dict]


def load_run(path: Path) -> RunFolder:
    """A run folder as `raysim run` leaves it, finished or not; anything else is a ConfigError."""
    if not path.is_dir():
        raise ConfigError(f"report: {path}: no such folder; pass run folders as `raysim run` writes them "
                          "(under output.dir, e.g. runs/NAME-STAMP)")
    if not (path / CONFIG_FILE).is_file():
        inner = sorted(p.name for p in path.iterdir() if (p / CONFIG_FILE).is_file())
        hint = f"; it holds run folders ({', '.join(inner[:3])}{', ...' if len(inner) > 3 else ''}): " \
               f"pass them, e.g. {path}/*" if inner else ""
        raise ConfigError(f"report: {path}: not a run folder (no {CONFIG_FILE}){hint}")
    if not (path / ROUNDS_FILE).is_file():
        raise ConfigError(f"report: {path}: no {ROUNDS_FILE}: the run has not finished a round yet")
    try:
        tree = yaml.safe_load((path / CONFIG_FILE).read_text())
        rows = read_rounds(path)
    except (yaml.YAMLError, pa.ArrowException, OSError) as exc:
        raise ConfigError(f"report: {path}: unreadable run folder: {exc}") from None
    if not isinstance(tree, dict) or not rows:
        raise ConfigError(f"report: {path}: unreadable run folder: {CONFIG_FILE} is not a config or "
                          f"{ROUNDS_FILE} holds no round")
    algorithm = (tree.get("algorithm") or {}).get("name", "?")
    summary = path / "summary.json"
    if summary.is_file():  # the algorithm's own name, where config.yaml has an import path
        algorithm = json.loads(summary.read_text()).get("algorithm", algorithm)
    return RunFolder(path, str(tree.get("name", path.name)), algorithm, rows)


def labels(runs: list[RunFolder]) -> list[str]:
    """`name [algorithm]`; the folder's name instead of the config's where two runs would share one."""
    plain = [f"{r.name} [{r.algorithm}]" for r in runs]
    return [f"{r.path.name} [{r.algorithm}]" if plain.count(p) > 1 else p for r, p in zip(runs, plain, strict=True)]


def compare(runs: list[RunFolder]) -> list[dict]:
    """One row per run: the totals summary.json has, computed from rounds.parquet (so an
    unfinished run compares too), exploration included."""
    table = []
    for run, label in zip(runs, labels(runs), strict=True):
        s = summarize(run.rows, run.path, run.algorithm)
        t = s["totals"]
        table.append({
            "label": label, "run_dir": str(run.path), "name": run.name, "algorithm": run.algorithm,
            "rounds": s["rounds"], "final_accuracy": s["final_accuracy"],
            "accuracy_last_3_mean": s["accuracy_last_3_mean"], "flops_executed": t["flops_executed"],
            "flops_effective": t["flops_effective"], "bytes": t["bytes_down"] + t["bytes_up"],
            "sim_time_s": t["sim_time_s"], "wall_time_s": t["wall_time_s"],
        })
    return table


def _cell(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key in ("final_accuracy", "accuracy_last_3_mean"):
        return f"{value:.4f}"
    if key.startswith("flops"):
        return _si(value, "FLOP")
    if key == "bytes":
        return _si(value, "B")
    if key.endswith("_s"):
        return f"{value:.1f} s"
    return str(value)


def markdown(table: list[dict]) -> str:
    head = ["run", *COLUMNS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join([row["label"], *(_cell(k, row[k]) for k in COLUMNS)]) + " |" for row in table]
    folders = [f"- {row['label']}: `{row['run_dir']}`" for row in table]
    plots = [f"![{name}]({name})" for name in PLOT_FILES]
    note = "Totals over rounds.parquet, exploration included; accuracy is top-1 on the global test set."
    return "\n".join(["# Run comparison", "", *lines, "", note, "", *folders, "", *plots, ""])


def prepare_out(out: Path | None) -> Path:
    """A new folder for the report's files; never one holding anything already."""
    if out is None:
        return create_run_dir(DEFAULT_PARENT, "report")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report --out {out}: is a file; pass a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"report --out {out}: not empty; the report never overwrites files: pass a new or "
                          "empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def report(paths: list[Path], out: Path | None, console: Console | None = None) -> Path:
    """Checks every input before writing anything; returns the folder written."""
    if not paths:
        raise ConfigError("report: no run folders given; e.g. raysim report runs/NAME-STAMP runs/OTHER-STAMP")
    seen = [p.resolve() for p in paths]
    twice = sorted({str(p) for p in paths if seen.count(p.resolve()) > 1})
    if twice:
        raise ConfigError(f"report: {', '.join(twice)} given more than once; name each run folder once")
    runs = [load_run(p) for p in paths]
    folder = prepare_out(out)
    table = compare(runs)
    draw_plots([Curves.of(row["label"], run.rows) for row, run in zip(table, runs, strict=True)], folder,
               title=f"{len(runs)} run{'s' if len(runs) > 1 else ''} compared")
    write_atomic(folder / "report.md", markdown(table).encode())
    result = {"runs": table, "how_measured": MEASURED}
    write_atomic(folder / "report.json", json.dumps(result, indent=2, allow_nan=False).encode())
    print_table(table, console)
    (console or Console()).print(escape(f"report, plots: {folder}"))
    return folder


def print_table(table: list[dict], console: Console | None = None) -> None:
    """Transposed (a column per run): a terminal fits a few runs' columns, not ten metrics'."""
    rich = Table(title="Run comparison (totals, exploration included)")
    rich.add_column("metric")
    for row in table:
        rich.add_column(escape(row["label"].replace(" [", "\n[")), justify="right")  # "[fedavg]" is no markup
    for key, heading in COLUMNS.items():
        rich.add_row(heading, *(_cell(key, row[key]) for row in table))
    (console or Console()).print(rich)
