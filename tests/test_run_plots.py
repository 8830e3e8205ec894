"""Every run's plots (raysim/results/plots.py): drawn at the end of each run and redrawn on resume,
cumulative costs with the exploration included and marked, SI-prefixed axes."""
import math
import subprocess
import sys

import numpy as np
from matplotlib.image import imread

from conftest import crashed_run
from raysim.experiment import execute, new_run
from raysim.results.plots import PLOT_FILES, PLOTS_DIR, Curves, figures, time_unit, wide_range
from raysim.results.round_log import read_rounds


def _row(rnd, phase="train", acc=None, flops=10.0, down=3, up=4, sim=1.5):
    return {"round": rnd, "phase": phase, "accuracy": acc, "flops_executed": flops, "bytes_down": down,
            "bytes_up": up, "sim_time_s": sim}


# An exploring run: round 0 explores (costly, evaluated), round 1 is not evaluated.
EXPLORING = [_row(0, "explore", 0.3, flops=4e12, down=2e9, up=3e9, sim=600.0), _row(1, flops=1e12, sim=300.0),
             _row(2, acc=0.5, flops=1e12, down=1e9, up=1e9, sim=300.0)]


def _drawn(fig):
    fig.canvas.draw()  # tick labels exist only once drawn
    return fig.axes


def test_curves_are_cumulative_with_the_exploration_included():
    c = Curves.of("a", list(reversed(EXPLORING)))  # sorted by round
    assert c.round.tolist() == [0, 1, 2] and c.explore.tolist() == [True, False, False]
    assert c.flops.tolist() == [4e12, 5e12, 6e12]
    assert c.bytes.tolist() == [5e9, 5e9 + 7, 5e9 + 7 + 2e9]
    assert c.accuracy[0] == 0.3 and math.isnan(c.accuracy[1]) and c.accuracy[2] == 0.5
    assert c.explore_cost == {"flops": 4e12, "bytes": 5e9}
    assert Curves.of("b", EXPLORING[1:]).explore_cost == {}


def test_accuracy_against_costs_plots_evaluated_rows_at_their_cumulative_cost_with_si_ticks():
    figs = figures([Curves.of("run-a [autoflip]", EXPLORING)], "run-a [autoflip]")
    assert list(figs) == list(PLOT_FILES)
    for name, unit, cumulative in (("accuracy_by_flops.png", "FLOP", [4e12, 6e12]),
                                   ("accuracy_by_bytes.png", "B", [5e9, 7e9 + 7])):
        (ax,) = _drawn(figs[name])
        line = ax.get_lines()[0]
        assert line.get_xdata().tolist() == cumulative and line.get_ydata().tolist() == [0.3, 0.5]
        star = ax.get_lines()[1]  # the point after exploration, marked
        assert star.get_marker() == "*" and star.get_xdata().tolist() == [cumulative[0]]
        assert ax.xaxis.get_offset_text().get_text() == ""  # no "1e12" offset
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert any(f"T{unit}" in t or f"G{unit}" in t for t in ticks), ticks
        assert all(t.endswith(unit) for t in ticks), ticks
        assert "exploration included" in ax.get_xlabel() and "cumulative" in ax.get_title()
        assert "exploration's cost" in [t.get_text() for t in ax.get_legend().get_texts()]
        assert [t.get_text() for t in ax.get_yticklabels() if t.get_text()][-1].endswith("%")


def test_accuracy_by_round_and_sim_time_mark_round_0_as_exploration():
    figs = figures([Curves.of("r", EXPLORING)], "r")
    (ax,) = _drawn(figs["accuracy_by_round.png"])
    assert ax.get_lines()[0].get_xdata().tolist() == [0, 2]
    assert "0 = exploration" in ax.get_xlabel()
    per_round, total = _drawn(figs["sim_time.png"])
    assert per_round.get_lines()[0].get_ydata().tolist() == [10.0, 5.0, 5.0]  # in minutes
    assert per_round.get_ylabel() == "per round (min)" and total.get_ylabel() == "cumulative (min)"
    assert total.get_lines()[0].get_ydata().tolist() == [10.0, 15.0, 20.0]
    assert per_round.get_lines()[1].get_marker() == "*"


def test_several_runs_one_line_each_with_a_legend_and_a_log_axis_when_orders_apart():
    cheap = [_row(1, acc=0.2, flops=1e6), _row(2, acc=0.4, flops=1e6)]
    figs = figures([Curves.of("cheap [fedavg]", cheap), Curves.of("costly [autoflip]", EXPLORING)], "2 runs")
    (ax,) = _drawn(figs["accuracy_by_flops.png"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"cheap [fedavg]", "costly [autoflip]"} <= set(legend)
    assert ax.get_xscale() == "log" and "log scale" in ax.get_xlabel()
    assert wide_range([1e6, 6e12]) and not wide_range([1e12, 6e12]) and not wide_range([5.0])
    (ax,) = _drawn(figs["accuracy_by_round.png"])
    runs = {"cheap [fedavg]", "costly [autoflip]"}
    assert ax.get_xscale() == "linear" and sorted(ln.get_label() for ln in ax.get_lines() if ln.get_label() in runs) \
        == sorted(runs)


def test_time_unit_picks_a_unit_with_round_numbers():
    assert time_unit(100.0) == (1.0, "s") and time_unit(600.0) == (60.0, "min")
    assert time_unit(4 * 3600.0) == (3600.0, "h") and time_unit(10 * 86400.0) == (86400.0, "days")


def _plots(run_dir):
    return sorted(p.name for p in (run_dir / PLOTS_DIR).iterdir())


def test_every_run_draws_its_plots_and_a_resumed_run_redraws_them(small_config, monkeypatch):
    cfg = small_config(rounds=4, output={"checkpoint_every": 2})
    run_dir = crashed_run(cfg, monkeypatch, crash_round=3)
    assert not (run_dir / PLOTS_DIR).exists()  # drawn at the end of a run

    import raysim.experiment

    drawn = []
    real = raysim.experiment.draw_run_plots
    monkeypatch.setattr(raysim.experiment, "draw_run_plots", lambda d, rows, label: drawn.append(
        ([r["round"] for r in rows], label)) or real(d, rows, label))
    execute(cfg, run_dir, resume=True)
    assert drawn == [([1, 2, 3, 4], "t [fedavg]")]  # the rounds before the crash too
    assert _plots(run_dir) == sorted(PLOT_FILES)
    for name in PLOT_FILES:
        image = imread(run_dir / PLOTS_DIR / name)
        assert image.shape[0] > 300 and image.shape[1] > 600 and np.ptp(image) > 0  # not blank
    (run_dir / PLOTS_DIR / "sim_time.png").unlink()
    execute(cfg.model_copy(update={"rounds": 5}), run_dir, resume=True)  # extended: redrawn with every round
    assert _plots(run_dir) == sorted(PLOT_FILES) and drawn[-1] == ([1, 2, 3, 4, 5], "t [fedavg]")
    assert [r["round"] for r in read_rounds(run_dir)] == [1, 2, 3, 4, 5]


def test_a_run_evaluated_once_still_draws(small_config):
    cfg = small_config(rounds=2, eval={"every": 5})  # evaluated only after the last round
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    assert _plots(run_dir) == sorted(PLOT_FILES)


def test_matplotlib_is_not_imported_by_the_cli_until_something_draws():
    code = ("import sys\nfrom raysim.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('matplotlib', 'mlflow', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
