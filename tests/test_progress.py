"""How a run reports its rounds: the bar on a terminal, one line per round elsewhere, the
exploration as a step of its own, and worker start-up kept out of round 1."""
import io
import json
import logging
import math

import pyarrow.parquet as pq
import pytest
from rich.console import Console

import raysim.results.progress as progress
from conftest import plan_round
from raysim.cli import main
from raysim.engine.record import Evaluation, RoundRecord
from raysim.results.progress import ProgressBar, RoundLines, round_reporter


def _record(round_, phase="train", done=10, wall=0.5, acc=None, loss=0.25):
    r = RoundRecord(round=round_, phase=phase, clients_sampled=done, clients_done=done, clients_dropped=0,
                    clients_failed=0, train_loss=loss, flops_executed=0.0, flops_effective=0.0, bytes_down=0,
                    bytes_up=0, client_train_wall_s=0.0, sim_time_s=0.0, wall_time_s=wall)
    r.evaluation = None if acc is None else Evaluation(acc, 1.0)
    return r


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_say_each_round_with_eta_and_the_exploration_apart(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    out = io.StringIO()
    lines = RoundLines(rounds=4, label="exp [autoflip]", stream=out)
    clock.now = 130.0  # 30 s of start-up and exploration, which the ETA must not extrapolate
    lines.on_round_end(_record(0, phase="explore", done=20, wall=8.0, acc=0.3), None, None)
    clock.now = 132.0  # round 1 took 2 s (the record says so), round 2 then 4 s with its evaluation
    lines.on_round_end(_record(1, wall=2.0), None, None)
    clock.now = 136.0
    lines.on_round_end(_record(2, wall=2.5, acc=0.61234, loss=math.nan), None, None)
    text = out.getvalue().splitlines()
    assert len(text) == 3
    assert text[0] == ("exp [autoflip]: exploration (round 0, before round 1): 20 clients, test acc 0.3000, "
                       "train loss 0.2500, 2.5 updates/s, 8.0 s")
    # 6 s for 2 rounds since round 1 began: 3 s a round, 2 rounds left.
    assert text[1] == "exp [autoflip]: round 1/4: train loss 0.2500, 5.0 updates/s, elapsed 0:00:32, ETA 0:00:06"
    assert text[2] == ("exp [autoflip]: round 2/4: test acc 0.6123, train loss n/a, 4.0 updates/s, "
                       "elapsed 0:00:36, ETA 0:00:06")


def _bar(explores, rounds=3):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    return ProgressBar(rounds, 0, "exp [fedavg]", explores=explores, console=console), out


@pytest.mark.parametrize("declared", [True, False])
def test_the_bar_counts_rounds_only_and_shows_exploration_as_its_own_step(declared):
    bar, out = _bar(explores=declared)
    bar.on_round_end(_record(0, phase="explore", acc=0.2), None, None)
    for r in (1, 2, 3):
        bar.on_round_end(_record(r, acc=0.5 + r / 100), None, None)
    bar.on_run_end(None)
    tasks = {t.description: t for t in bar.progress.tasks}
    rounds = tasks[r"exp \[fedavg] rounds"]  # escaped: rich would read [fedavg] as a style
    assert rounds.completed == rounds.total == 3  # not 4/3
    assert tasks[r"exp \[fedavg] exploration"].completed == 1
    shown = out.getvalue()
    assert "exp [fedavg] rounds" in shown and "3/3" in shown and "ETA" in shown and "acc 0.530" in shown
    assert any(isinstance(c, progress.TimeRemainingColumn) for c in bar.progress.columns)


def test_a_run_without_exploration_has_no_exploration_line():
    bar, _ = _bar(explores=False)
    bar.on_round_end(_record(1), None, None)
    bar.on_run_end(None)
    assert [t.description for t in bar.progress.tasks] == [r"exp \[fedavg] rounds"]


def test_the_bar_only_on_a_terminal_else_lines():
    terminal = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False, force_jupyter=False)
    shown = round_reporter(3, 0, "x", bar=True, explores=False, console=terminal)
    assert isinstance(shown, ProgressBar)
    shown.on_run_end(None)
    assert isinstance(round_reporter(3, 0, "x", bar=True, explores=False, console=pipe), RoundLines)
    assert isinstance(round_reporter(3, 0, "x", bar=False, explores=False, console=terminal), RoundLines)


def test_no_progress_prints_one_line_per_round(tmp_path, capsys):
    rc = main(["run", "--set", "rounds=3", "--set", "data.num_clients=8", "--set", "clients.per_round=2",
               "--set", "eval.every=2", "--set", "backend.name=inprocess", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    rounds = [line for line in out.splitlines() if "synthetic-default [fedavg]: round " in line]
    assert [line.split(": ")[1] for line in rounds] == ["round 1/3", "round 2/3", "round 3/3"]
    assert "test acc" in rounds[1] and "test acc" not in rounds[0]  # evaluated every 2nd round and the last
    assert all("updates/s" in line and "ETA" in line and "train loss" in line for line in rounds)


def test_worker_start_up_is_its_own_number_not_round_ones(tmp_path, monkeypatch, small_config):
    import time

    import raysim.experiment as experiment
    from raysim.engine.backend import InProcessBackend

    class SlowStart(InProcessBackend):
        def wait_ready(self):
            super().wait_ready()
            time.sleep(0.6)  # what Ray's actors cost before they can take a client

    monkeypatch.setattr(experiment, "build_backend", lambda cfg, runner: SlowStart(runner))
    cfg = small_config(rounds=2)
    run_dir = experiment.new_run(cfg)
    summary = experiment.execute(cfg, run_dir, quiet=True)
    rows = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    assert summary["startup_s"] >= 0.6 and all(r["wall_time_s"] < 0.6 for r in rows)
    done, wall = sum(r["clients_done"] for r in rows), sum(r["wall_time_s"] for r in rows)
    assert summary["client_updates_per_s"] == pytest.approx(done / wall)
    assert json.loads((run_dir / "summary.json").read_text())["startup_s"] == summary["startup_s"]
    assert "startup_s" in summary["how_measured"]


def test_warm_up_counts_the_original_models_flops_so_the_first_client_does_not(small_config, monkeypatch):
    from collections import OrderedDict

    import raysim.costs.flops as flops

    measured = []
    real = flops._measure
    monkeypatch.setattr(flops, "_cache", OrderedDict())
    monkeypatch.setattr(flops, "_measure", lambda *a: measured.append(a) or real(*a))
    r = plan_round(small_config(), 0, [0, 1])
    r.runner.warm_up()
    assert len(measured) == 1  # torch's first FLOP count, paid at start-up
    partial = r.runner.run(r.plan.tasks, r.plan.broadcast)
    assert partial.train.done == 2 and len(measured) == 1  # round 1's clients found it cached


def test_auth_warning_is_replaced_by_one_line_naming_the_token(tmp_path, monkeypatch):
    from ray._private.authentication.authentication_token_setup import _warn_token_auth_enabled

    from raysim.engine.ray_auth import RAY_AUTH_LOGGER, own_auth_message

    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    logged = []
    handler = logging.Handler()
    handler.emit = logged.append
    ray_logger = logging.getLogger(RAY_AUTH_LOGGER)  # Ray's loggers do not propagate to pytest's
    ray_logger.addHandler(handler)
    try:
        out = io.StringIO()
        with own_auth_message(out):
            (tmp_path / ".ray").mkdir()
            (tmp_path / ".ray" / "auth_token").write_text("t")  # what ray.init writes when none exists
            _warn_token_auth_enabled()  # Ray's own call, as ray.init makes it
        assert logged == []
        assert out.getvalue() == (f"raysim: local Ray with token authentication on "
                                  f"(token: {tmp_path}/.ray/auth_token, created by this run)\n")
        _warn_token_auth_enabled()  # outside a run's ray.init, Ray's logging is untouched
        assert len(logged) == 1 and "RAY_AUTH_MODE=disabled" in logged[0].getMessage()
    finally:
        ray_logger.removeHandler(handler)
    quiet = io.StringIO()
    with own_auth_message(quiet):  # Ray did not enable it (RAY_AUTH_MODE set): nothing to say
        pass
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    with own_auth_message(quiet):
        _warn_token_auth_enabled()
    assert quiet.getvalue() == "raysim: local Ray with token authentication on (token: $RAY_AUTH_TOKEN)\n"


def test_a_local_run_prints_our_auth_line_not_rays_warning(tmp_path):
    """A real local Ray, with RAY_AUTH_MODE unset and a HOME of its own: Ray turns token
    authentication on and makes the token; the run says so in one line."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
    env["HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-m", "raysim.cli", "run", "--set", "rounds=1", "--set", "data.num_clients=4",
                           "--set", "clients.per_round=2", "--set", "backend.num_workers=1", "--set", "eval.clients=false",
                           "--out", str(tmp_path / "runs"), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    token = tmp_path / "home" / ".ray" / "auth_token"
    assert token.is_file()
    assert "Token authentication is enabled" not in proc.stderr
    ours = [line for line in proc.stderr.splitlines() if "token authentication" in line]
    assert ours == [f"raysim: local Ray with token authentication on (token: {token}, created by this run)"]
