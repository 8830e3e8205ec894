"""Run folders and resume under careless or hostile use: names that try to escape, a
second process on the same folder, runs that fail before their first round, damaged or
edited checkpoints, configs edited between runs, appended files cut back on resume."""
import json
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest
import torch

from raysim.algorithms.fedavg import FedAvg
from raysim.cli import main
from raysim.config import ConfigError, ExperimentConfig, config_identity, identity_differences
from raysim.engine.api import ServerState
from raysim.engine.loop import Evaluator
from raysim.experiment import execute, new_run
from raysim.results.checkpoint import checkpoint_stems, latest_checkpoint, load_checkpoint, save_checkpoint
from raysim.results.failure_log import read_failures
from raysim.results.run_dir import create_run_dir, run_lock

INPROCESS = ["--set", "backend.name=inprocess", "--no-progress"]
SMALL = ["--set", "data.num_clients=12", "--set", "clients.per_round=4", *INPROCESS]


def _cli(tmp_path, *args):
    return main(["run", *SMALL, "--out", str(tmp_path / "runs"), *args])


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/elsewhere", "a/b", "..", ".hidden", "x" * 101])
def test_a_name_that_is_not_plain_is_refused_and_nothing_is_created(tmp_path, capsys, name):
    assert _cli(tmp_path, "--set", f"name={name}") == 2
    err = capsys.readouterr().err
    assert "not a plain name" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not list(tmp_path.parent.glob("escaped-*"))


def test_the_run_folder_is_always_inside_the_output_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a plain name"):
        create_run_dir(tmp_path, "../up")
    run = create_run_dir(tmp_path, "ok.name_1")
    assert run.parent == tmp_path and run.name.startswith("ok.name_1-")


def test_an_output_folder_that_is_a_file_or_unwritable_is_one_message(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["run", *SMALL, "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and afile.read_text() == "mine"
    assert main(["run", *SMALL, "--out", str(afile / "below")]) == 2
    assert "cannot create it" in capsys.readouterr().err


def test_a_second_process_on_the_same_folder_is_refused(tmp_path, capsys):
    assert _cli(tmp_path, "--set", "rounds=1") == 0
    (run,) = (tmp_path / "runs").iterdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from raysim.results.run_dir import run_lock
        with run_lock(Path({str(run)!r})):
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["run", "--resume", str(run), "--set", "rounds=2", "--no-progress"]) == 2
        assert f"in use by another raysim process (pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run), pytest.raises(ConfigError, match="in use"), run_lock(run):  # one holder, even in-process
        pass
    assert main(["run", "--resume", str(run), "--set", "rounds=2", "--no-progress"]) == 0  # free again


def test_a_run_that_fails_before_its_first_round_leaves_no_folder(tmp_path, capsys):
    # AutoFLIP cannot prune logreg (no hidden layer): refused when the algorithm is built.
    assert _cli(tmp_path, "--set", "algorithm.name=autoflip") == 2
    assert "has none" in capsys.readouterr().err
    assert list((tmp_path / "runs").iterdir()) == []


def test_ctrl_c_stops_cleanly_and_names_the_resume_command(tmp_path, capsys, monkeypatch):
    original = Evaluator.__call__

    def interrupt_in_round_3(self, state):
        if state.round == 3:
            raise KeyboardInterrupt
        return original(self, state)

    monkeypatch.setattr(Evaluator, "__call__", interrupt_in_round_3)
    assert _cli(tmp_path, "--set", "rounds=4", "--set", "eval.every=1") == 130
    (run,) = (tmp_path / "runs").iterdir()
    err = capsys.readouterr().err
    assert f"interrupted after round 2; resume with: raysim run --resume {run}" in err and "Traceback" not in err
    monkeypatch.setattr(Evaluator, "__call__", original)
    assert main(["run", "--resume", str(run), "--no-progress"]) == 0
    assert [r["round"] for r in pq.read_table(run / "rounds.parquet").to_pylist()] == [1, 2, 3, 4]


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(FedAvg, "aggregate", broken)
    assert _cli(tmp_path, "--set", "rounds=1") == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: a bug" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="a bug"):
        _cli(tmp_path, "--set", "rounds=1", "--debug")


# --- Resume ------------------------------------------------------------------------

def _crashed_run(small_config, monkeypatch, fail_clients=(), **extra):
    """A run of 4 rounds killed while evaluating round 4 (rounds 1-3 logged; with checkpoints
    every 2 the newest is round 2), `fail_clients` raising in every round; returns (cfg, run_dir)."""
    cfg = small_config(rounds=4, **({"output": {"checkpoint_every": 2}} | extra))
    original_update, original_eval = FedAvg.client_update, Evaluator.__call__

    def failing(self, model, data, task, broadcast):
        if task.client in fail_clients:
            raise RuntimeError(f"client {task.client} breaks")
        return original_update(self, model, data, task, broadcast)

    def crash_in_round_4(self, state):
        if state.round == 4:
            raise KeyboardInterrupt("killed")
        return original_eval(self, state)

    monkeypatch.setattr(FedAvg, "client_update", failing)
    monkeypatch.setattr(Evaluator, "__call__", crash_in_round_4)
    run_dir = new_run(cfg)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, run_dir)
    monkeypatch.setattr(Evaluator, "__call__", original_eval)
    return cfg, run_dir


def test_resume_cuts_failures_back_and_numbers_rounds_as_the_round_log(small_config, monkeypatch):
    cfg, run_dir = _crashed_run(small_config, monkeypatch, fail_clients=set(range(12)) - {0, 1})
    assert {f["round"] for f in read_failures(run_dir)} == {1, 2, 3}  # logged past the checkpoint (round 2)
    execute(cfg, run_dir, resume=True)
    failures = read_failures(run_dir)
    rows = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    per_round = {r["round"]: r["clients_failed"] for r in rows}
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    # Each round's failures listed once, under the round number rounds.parquet gives it.
    assert {r: sum(f["round"] == r for f in failures) for r in per_round} == per_round
    assert sum(per_round.values()) > 4 and all(f["phase"] == "train" for f in failures)


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(small_config, monkeypatch, capsys):
    cfg = small_config(rounds=4, output={"checkpoint_every": 1})
    straight = new_run(cfg)
    execute(cfg, straight)
    cfg, run_dir = _crashed_run(small_config, monkeypatch, output={"checkpoint_every": 1})
    newest, older = checkpoint_stems(run_dir)[:2]
    assert (newest.name, older.name) == ("round-00003", "round-00002")
    data = newest.with_suffix(".safetensors").read_bytes()
    newest.with_suffix(".safetensors").write_bytes(data[: len(data) // 2])  # truncated
    execute(cfg, run_dir, resume=True)
    err = capsys.readouterr().err
    assert "checkpoint round-00003 is damaged" in err and "trying the one before" in err
    a, b = load_checkpoint(latest_checkpoint(straight)), load_checkpoint(latest_checkpoint(run_dir))
    assert b.round == 4 and all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


@pytest.mark.parametrize("damage", ["truncated json", "edited round", "edited weights"])
def test_an_edited_or_truncated_checkpoint_fails_verification(small_config, tmp_path, damage):
    cfg = small_config(rounds=2)
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    stem = latest_checkpoint(run_dir)
    meta_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    if damage == "truncated json":
        meta_path.write_text(meta_path.read_text()[:40])
    elif damage == "edited round":
        meta = json.loads(meta_path.read_text())
        meta["round"] = 7
        meta_path.write_text(json.dumps(meta))
    else:
        data = bytearray(tensor_path.read_bytes())
        data[-3] ^= 0xFF
        tensor_path.write_bytes(bytes(data))
    from raysim.results.checkpoint import DamagedCheckpoint, read_checkpoint

    with pytest.raises(DamagedCheckpoint):
        read_checkpoint(stem)
    # The run falls back to round 1 and re-runs round 2 (without being told to extend it).
    assert checkpoint_stems(run_dir)[1].name == "round-00001"
    execute(cfg, run_dir, resume=True)
    assert load_checkpoint(latest_checkpoint(run_dir)).round == 2


def test_a_config_edited_between_runs_is_refused_before_any_work(small_config, monkeypatch, tmp_path, capsys):
    cfg, run_dir = _crashed_run(small_config, monkeypatch)
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("name: logreg", "name: mlp"))
    before = (run_dir / "rounds.parquet").read_bytes()
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "differs from the config checkpoint round 2 was made with, in model.name" in err and "Traceback" not in err
    assert (run_dir / "rounds.parquet").read_bytes() == before  # nothing overwritten


def test_a_checkpoint_whose_weights_do_not_fit_the_model_is_refused(small_config, tmp_path):
    cfg = small_config(rounds=3)
    run_dir = new_run(cfg)
    execute(cfg.model_copy(update={"rounds": 1}), run_dir)
    wrong = ServerState(1, {"classifier.weight": torch.zeros(3, 3), "classifier.bias": torch.zeros(3)})
    for stem in checkpoint_stems(run_dir):
        stem.with_suffix(".json").unlink()
    save_checkpoint(run_dir, wrong, config_identity(cfg))
    with pytest.raises(ConfigError, match="does not fit the model"):
        execute(cfg, run_dir, resume=True)


def test_a_checkpoint_from_before_a_new_setting_resumes_while_that_setting_is_at_its_default(small_config):
    """A field raysim gained after the checkpoint was written (here data.synthetic.resident) is
    absent from the checkpoint's identity: at its default it matches, set otherwise it is refused."""
    cfg = small_config(rounds=3)
    run_dir = new_run(cfg)
    execute(cfg.model_copy(update={"rounds": 1}), run_dir)
    state = load_checkpoint(latest_checkpoint(run_dir))
    older = config_identity(cfg)
    del older["data"]["synthetic"]["resident"]
    for stem in checkpoint_stems(run_dir):
        stem.with_suffix(".json").unlink()
    save_checkpoint(run_dir, state, older)
    assert execute(cfg, run_dir, resume=True)["rounds"] == 3
    changed = identity_differences(older, config_identity(small_config(data={"synthetic": {"resident": False}})),
                                   config_identity(ExperimentConfig()))
    assert changed == ["data.synthetic.resident"]


# --- Numerics and YAML ---------------------------------------------------------------

@pytest.mark.parametrize("setting", ["clients.optimizer.lr=.inf", "clients.optimizer.lr=.nan",
                                     "algorithm.server_lr=-.inf", "devices.deadline_s=.inf"])
def test_non_finite_numbers_are_refused_at_validation(tmp_path, capsys, setting):
    assert _cli(tmp_path, "--set", setting) == 2
    assert f"{setting.split('=')[0]}: Input should be a finite number" in capsys.readouterr().err


def test_non_finite_algorithm_parameters_are_refused(tmp_path, capsys):
    assert _cli(tmp_path, "--set", "algorithm.name=fedprox", "--set", "algorithm.params.mu=.inf") == 2
    assert "algorithm.params.mu" in capsys.readouterr().err


def test_an_empty_config_or_a_duplicate_key_is_refused(tmp_path, capsys):
    empty, dup = tmp_path / "empty.yaml", tmp_path / "dup.yaml"
    empty.write_text("")
    dup.write_text("rounds: 1\nseed: 2\nrounds: 2\n")
    assert main(["run", str(empty)]) == 2
    assert "the file is empty" in capsys.readouterr().err
    assert main(["run", str(dup)]) == 2
    assert "duplicate key 'rounds' on line 3" in capsys.readouterr().err


def test_a_diverged_run_warns_in_the_summary_and_can_stop(tmp_path, capsys):
    diverging = ["--set", "model.name=mlp", "--set", "clients.optimizer.lr=1e20", "--set", "rounds=3"]
    assert _cli(tmp_path, *diverging) == 0
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["warnings"] and summary["warnings"][0].startswith("round 1: ")
    assert "clients failed" in summary["warnings"][0] and summary["stopped_early"] is None
    assert "warning: diverged at round 1" in capsys.readouterr().out
    assert _cli(tmp_path, *diverging, "--set", "stop_on_divergence=true") == 1
    stopped = max((tmp_path / "runs").iterdir())
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["rounds"] == 1 and "diverged at round 1" in summary["stopped_early"]
