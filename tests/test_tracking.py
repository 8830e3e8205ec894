"""Experiment tracking (raysim/results/tracking.py), read back from what it wrote: TensorBoard's
event files and MLflow's store hold every numeric round-log column, step = round."""
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import crashed_run
from raysim.cli import main
from raysim.experiment import execute, new_run
from raysim.results.round_log import read_rounds
from raysim.results.tracking import MLFLOW_DIR, TENSORBOARD_DIR, round_metrics, store_uri

MLP = {"name": "mlp", "hidden": 32}
EXPLORING = {"name": "autoflip", "pruning": {"explore_epochs": 1}}  # round 0 explores
VOLATILE = {"wall_time_s", "client_train_wall_s"}  # measured, so not the same when a round is run again


def _columns(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What a tracker should hold: per column, (round, value) for every round that has one."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in round_metrics(row).items():
            out.setdefault(key, []).append((row["round"], value))
    return out


def _same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return len(a) == len(b) and all(s == t and (v == w or math.isnan(v) and math.isnan(w))
                                    for (s, v), (t, w) in zip(a, b, strict=True))


def _crash_then_resume(cfg, monkeypatch, crash_round: int):
    run_dir = crashed_run(cfg, monkeypatch, crash_round)
    execute(cfg, run_dir, resume=True)
    return run_dir


def _tensorboard(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0})  # 0: keep all
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _float32(columns):  # TensorBoard keeps scalars as float32
    return {k: [(s, float(np.float32(v))) for s, v in pts] for k, pts in columns.items()}


def test_tensorboard_event_files_hold_every_round_log_column(small_config):
    pytest.importorskip("tensorboard")
    cfg = small_config(model=MLP, algorithm=EXPLORING, tracking={"tensorboard": True})
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    rows = read_rounds(run_dir)
    assert rows[0]["round"] == 0 and rows[0]["phase"] == "explore"
    logged, expected = _tensorboard(run_dir), _float32(_columns(rows))
    assert {"accuracy", "flops_executed", "bytes_up", "sim_time_s", "sparsity"} <= set(expected)
    assert logged.keys() == expected.keys()
    assert all(_same(logged[k], expected[k]) for k in expected), {k: logged[k] for k in expected
                                                                    if not _same(logged[k], expected[k])}


def test_tensorboard_after_a_crash_and_resume_shows_each_round_once(small_config, monkeypatch):
    pytest.importorskip("tensorboard")
    # Checkpoints every 2 rounds; the crash in round 4 makes the resumed run repeat round 3,
    # which the tracker had logged already.
    cfg = small_config(rounds=4, output={"checkpoint_every": 2}, tracking={"tensorboard": True})
    run_dir = _crash_then_resume(cfg, monkeypatch, crash_round=4)
    logged, expected = _tensorboard(run_dir), _float32(_columns(read_rounds(run_dir)))
    assert logged.keys() == expected.keys()
    assert all(_same(logged[k], expected[k]) for k in expected)  # the repeated round's new wall times too


def _mlflow(run_dir):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(run_dir))
    experiment = client.get_experiment_by_name("t")  # the config's name; the store's "Default" stays empty
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                      key=lambda m: m.step)]
               for key in run.data.metrics}
    return experiment, run, history


def test_mlflow_store_metric_history_equals_rounds_parquet(small_config):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    cfg = small_config(model=MLP, algorithm=EXPLORING, tracking={"mlflow": True})
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    assert (run_dir / MLFLOW_DIR / "mlflow.db").is_file()
    experiment, run, history = _mlflow(run_dir)
    expected = _columns(read_rounds(run_dir))
    assert run.info.experiment_id == experiment.experiment_id and run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["clients.optimizer.lr"] == "0.05" and run.data.params["algorithm.name"] == "autoflip"
    assert run.data.tags["raysim.algorithm"] == "autoflip"
    assert history.keys() == expected.keys() and expected["accuracy"][0][0] == 0
    assert all(_same(history[k], expected[k]) for k in expected)


def test_mlflow_resume_continues_the_same_run_without_duplicate_steps(small_config, monkeypatch, tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    monkeypatch.chdir(tmp_path)  # a relative output.dir, as `raysim run --out runs` gives
    cfg = small_config(rounds=4, output={"checkpoint_every": 2, "dir": "runs"}, tracking={"mlflow": True})
    run_dir = _crash_then_resume(cfg, monkeypatch, crash_round=4)
    _, run, history = _mlflow(run_dir)  # one experiment, one run: the resumed run continued it
    expected = _columns(read_rounds(run_dir))
    assert run.info.status == "FINISHED" and history.keys() == expected.keys()
    assert all([s for s, _ in history[k]] == [1, 2, 3, 4] for k in expected)  # each round once
    # MLflow cannot delete a point: round 3, logged before the crash, keeps its first wall times.
    assert all(_same(history[k], expected[k]) for k in expected if k not in VOLATILE)


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_tracker_without_its_extra_is_one_message_naming_the_extra(tracker, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, tracker, None)  # as if not installed
    out = tmp_path / "runs"
    assert main(["run", "--set", f"tracking.{tracker}=true", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"tracking.{tracker}: needs the '{tracker}' extra" in err and f"'.[{tracker}]'" in err
    assert "Traceback" not in err and not out.exists()  # refused before any run folder


def test_trackers_are_not_imported_unless_turned_on(tmp_path):
    code = ("import sys, raysim\n"
            f"raysim.run({{'rounds': 1, 'data': {{'num_clients': 12}}, 'clients': {{'per_round': 3}}, "
            f"'backend': {{'name': 'inprocess'}}, 'output': {{'dir': {str(tmp_path)!r}}}}})\n"
            "print(sorted(m for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    (run_dir,) = tmp_path.iterdir()
    assert not (run_dir / TENSORBOARD_DIR).exists() and not (run_dir / MLFLOW_DIR).exists()
