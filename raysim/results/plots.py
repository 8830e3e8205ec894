"""A run's curves as PNGs: accuracy against rounds, cumulative executed FLOPs and cumulative
bytes, and the simulated clock per round and in total. One run draws into its own folder
(at the end of every run); `raysim report` draws several, one line per run."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PLOTS_DIR = "plots"
PLOT_FILES = ("accuracy_by_round.png", "accuracy_by_flops.png", "accuracy_by_bytes.png", "sim_time.png")
EXPLORE_LABEL = "after exploration (round 0)"


@dataclass(frozen=True)
class Curves:
    """One run's series, row by row of rounds.parquet (the exploration row, round 0, included)."""

    label: str
    round: np.ndarray
    explore: np.ndarray  # True on the exploration row
    accuracy: np.ndarray  # NaN where the round was not evaluated
    flops: np.ndarray  # cumulative executed training FLOPs after each row
    bytes: np.ndarray  # cumulative bytes down + up after each row
    sim_time_s: np.ndarray  # simulated seconds of each row

    @classmethod
    def of(cls, label: str, rows: list[dict]) -> "Curves":
        rows = sorted(rows, key=lambda r: r["round"])
        acc = [r.get("accuracy") for r in rows]
        return cls(
            label=label,
            round=np.array([r["round"] for r in rows], dtype=int),
            explore=np.array([r.get("phase", "train") == "explore" for r in rows], dtype=bool),
            accuracy=np.array([math.nan if a is None else a for a in acc], dtype=float),
            flops=np.cumsum([r["flops_executed"] for r in rows], dtype=float),
            bytes=np.cumsum([r["bytes_down"] + r["bytes_up"] for r in rows], dtype=float),
            sim_time_s=np.array([r["sim_time_s"] for r in rows], dtype=float),
        )

    @property
    def explore_cost(self) -> dict[str, float]:
        """What the exploration row alone cost, by axis; empty without exploration."""
        if not self.explore.any():
            return {}
        i = int(np.flatnonzero(self.explore)[-1])
        return {"flops": float(self.flops[i]), "bytes": float(self.bytes[i])}


def draw_run_plots(run_dir: Path, rows: list[dict], label: str) -> list[Path]:
    """The run's plots into `run_dir/plots/` (redrawn, whole, on every call: a resumed run too)."""
    return draw_plots([Curves.of(label, rows)], run_dir / PLOTS_DIR, title=label)


def draw_plots(runs: list[Curves], out: Path, title: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(runs, title).items():
        path = out / name
        tmp = path.with_name(path.name + ".tmp.png")  # a crash mid-write never leaves half a PNG
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
        paths.append(path)
    return paths


def figures(runs: list[Curves], title: str) -> dict:
    """File name -> matplotlib Figure (object API: no pyplot, no global state)."""
    # Imported here so that every `raysim` command does not pay for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = [f"C{i % 10}" for i in range(len(runs))]
    drawers = (_accuracy_by_round, _accuracy_by_flops, _accuracy_by_bytes, _sim_time)
    out = {}
    for name, draw in zip(PLOT_FILES, drawers, strict=True):
        tall = draw is _sim_time
        fig = Figure(figsize=(7.5, 6.4) if tall else (7.5, 4.6))
        FigureCanvasAgg(fig)
        draw(fig, runs, colors, title)
        # Fixed margins, not tight_layout: that renders every figure once more only to measure it
        # (a third of the drawing time, paid by every run).
        fig.subplots_adjust(left=0.11, right=0.95, bottom=0.09 if tall else 0.13, top=0.9 if tall else 0.87,
                            hspace=0.12)
        out[name] = fig
    return out


def _accuracy_axis(ax) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_ylabel("top-1 accuracy, global test set")
    ax.grid(alpha=0.3)


def _accuracy_curves(ax, runs: list[Curves], colors: list[str], x_of) -> None:
    """One line per run through its evaluated rows; the exploration row's point a star."""
    for run, color in zip(runs, colors, strict=True):
        x, evaluated = x_of(run), ~np.isnan(run.accuracy)
        ax.plot(x[evaluated], run.accuracy[evaluated], marker="o", markersize=3, color=color, label=run.label)
        first = evaluated & run.explore
        if first.any():
            ax.plot(x[first], run.accuracy[first], linestyle="none", marker="*", markersize=13, color=color,
                    markeredgecolor="black", markeredgewidth=0.6)
    if any((r.explore & ~np.isnan(r.accuracy)).any() for r in runs):
        ax.plot([], [], linestyle="none", marker="*", markersize=11, color="white", markeredgecolor="black",
                label=EXPLORE_LABEL)
    if not any((~np.isnan(r.accuracy)).any() for r in runs):
        ax.text(0.5, 0.5, "no evaluated round", transform=ax.transAxes, ha="center", va="center")


def _legend(ax, runs: list[Curves]) -> None:
    # A lone run is named in the title; its legend would only repeat it, unless it explains a marker.
    handles, labels = ax.get_legend_handles_labels()
    if len(runs) == 1:
        handles = [h for h, lab in zip(handles, labels) if lab != runs[0].label]
        labels = [lab for lab in labels if lab != runs[0].label]
    if handles:
        ax.legend(handles, labels, fontsize="small", loc="best")


def _accuracy_by_round(fig, runs, colors, title) -> None:
    from matplotlib.ticker import MaxNLocator

    ax = fig.add_subplot()
    _accuracy_curves(ax, runs, colors, lambda r: r.round)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (0 = exploration)" if _explores(runs) else "round")
    _accuracy_axis(ax)
    ax.set_title(f"Test accuracy by round\n{title}", fontsize="medium")
    _legend(ax, runs)


def _accuracy_by_cost(fig, runs, colors, title, key: str, unit: str, what: str) -> None:
    from matplotlib.ticker import EngFormatter, NullFormatter

    ax = fig.add_subplot()
    _accuracy_curves(ax, runs, colors, lambda r: getattr(r, key))
    log = wide_range([float(getattr(r, key)[-1]) for r in runs if len(r.round)])
    if log:  # runs orders of magnitude apart: on a linear axis the cheaper ones would sit on the y axis
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(left=0)
    for run, color in zip(runs, colors, strict=True):
        cost = run.explore_cost.get(key)
        if cost and log:  # a span from a log axis's arbitrary left edge would mean nothing
            ax.axvline(cost, color=color, linestyle="--", linewidth=1)
        elif cost:
            ax.axvspan(0, cost, color=color, alpha=0.12, linewidth=0, zorder=0)
    exploring = [c for r, c in zip(runs, colors, strict=True) if r.explore.any()]
    shade = exploring[0] if len(exploring) == 1 else "grey"  # the legend's swatch: the run's own colour if one
    if exploring and log:
        ax.plot([], [], color=shade, linestyle="--", linewidth=1, label="exploration's cost")
    elif exploring:
        ax.fill_between([], [], color=shade, alpha=0.12, label="exploration's cost")
    ax.xaxis.set_major_formatter(EngFormatter(unit=unit))
    ax.set_xlabel(f"cumulative {what}" + (" (exploration included)" if _explores(runs) else "")
                  + (", log scale" if log else ""))
    _accuracy_axis(ax)
    ax.set_title(f"Test accuracy against cumulative {what}\n{title}", fontsize="medium")
    _legend(ax, runs)


def wide_range(totals: list[float], ratio: float = 20.0) -> bool:
    """Whether the runs' total costs lie so far apart that only a log axis shows them all."""
    positive = [t for t in totals if t > 0]
    return len(positive) > 1 and max(positive) / min(positive) > ratio


def _accuracy_by_flops(fig, runs, colors, title) -> None:
    _accuracy_by_cost(fig, runs, colors, title, "flops", "FLOP", "executed training FLOPs")


def _accuracy_by_bytes(fig, runs, colors, title) -> None:
    _accuracy_by_cost(fig, runs, colors, title, "bytes", "B", "bytes exchanged (down + up)")


def time_unit(seconds: float) -> tuple[float, str]:
    """Seconds per unit and its name, so a time axis reads in round numbers of one unit."""
    for factor, name in ((86400.0, "days"), (3600.0, "h"), (60.0, "min")):
        if seconds >= 3 * factor:
            return factor, name
    return 1.0, "s"


def _sim_time(fig, runs, colors, title) -> None:
    from matplotlib.ticker import MaxNLocator

    per_round, total = fig.subplots(2, 1, sharex=True)
    top = max((float(r.sim_time_s.max()) for r in runs if len(r.sim_time_s)), default=0.0)
    end = max((float(r.sim_time_s.sum()) for r in runs), default=0.0)
    (f_round, u_round), (f_total, u_total) = time_unit(top), time_unit(end)
    for run, color in zip(runs, colors, strict=True):
        per_round.plot(run.round, run.sim_time_s / f_round, marker="o", markersize=3, color=color, label=run.label)
        total.plot(run.round, np.cumsum(run.sim_time_s) / f_total, color=color, label=run.label)
        if run.explore.any():
            per_round.plot(run.round[run.explore], run.sim_time_s[run.explore] / f_round, linestyle="none",
                           marker="*", markersize=13, color=color, markeredgecolor="black", markeredgewidth=0.6)
    if _explores(runs):
        per_round.plot([], [], linestyle="none", marker="*", markersize=11, color="white", markeredgecolor="black",
                       label="exploration (round 0)")
    per_round.set_ylabel(f"per round ({u_round})")
    per_round.set_ylim(bottom=0)
    per_round.set_title(f"Simulated time (the slowest included client's; round 0 = exploration)\n{title}"
                        if _explores(runs) else f"Simulated time (the slowest included client's)\n{title}",
                        fontsize="medium")
    total.set_ylabel(f"cumulative ({u_total})")
    total.set_ylim(bottom=0)
    total.set_xlabel("round")
    total.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (per_round, total):
        ax.grid(alpha=0.3)
    _legend(per_round, runs)


def _explores(runs: list[Curves]) -> bool:
    return any(r.explore.any() for r in runs)
