"""`raysim report RUN [RUN ...] [--out DIR]` as a user runs it, on real run folders."""
import json

import pytest

from raysim.cli import main
from raysim.experiment import execute, new_run
from raysim.results.plots import PLOT_FILES


@pytest.fixture
def two_runs(small_config):
    """A FedAvg run and an exploring AutoFLIP run of the same small experiment."""
    folders = []
    for algorithm in ("fedavg", "autoflip"):
        cfg = small_config(rounds=3, model={"name": "mlp", "hidden": 32},
                           algorithm={"name": algorithm, "pruning": {"explore_epochs": 1}})
        run_dir = new_run(cfg)
        execute(cfg, run_dir)
        folders.append(run_dir)
    return folders


def test_report_compares_runs_in_one_table_and_one_set_of_plots(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fedavg" in printed and "autoflip" in printed and str(out) in printed
    assert sorted(p.name for p in out.iterdir()) == sorted([*PLOT_FILES, "report.json", "report.md"])
    table = json.loads((out / "report.json").read_text())["runs"]
    assert [r["label"] for r in table] == ["t [fedavg]", "t [autoflip]"]
    for row, run_dir in zip(table, two_runs, strict=True):
        summary = json.loads((run_dir / "summary.json").read_text())
        t = summary["totals"]
        assert row["final_accuracy"] == summary["final_accuracy"]
        assert row["accuracy_last_3_mean"] == summary["accuracy_last_3_mean"]
        assert row["rounds"] == summary["rounds"] == 3
        assert (row["flops_executed"], row["flops_effective"], row["bytes"], row["sim_time_s"], row["wall_time_s"]) \
            == (t["flops_executed"], t["flops_effective"], t["bytes_down"] + t["bytes_up"], t["sim_time_s"],
                t["wall_time_s"])
    assert table[1]["flops_effective"] < table[1]["flops_executed"]  # AutoFLIP prunes: the columns differ
    md = (out / "report.md").read_text()
    assert "| t [fedavg] | 3 |" in md and "| t [autoflip] | 3 |" in md and "![sim_time.png](sim_time.png)" in md


def test_runs_sharing_a_name_and_algorithm_are_told_apart_by_folder(small_config, tmp_path, capsys):
    folders = []
    for seed in (1, 2):
        cfg = small_config(rounds=1, seed=seed)
        folders.append(new_run(cfg))
        execute(cfg, folders[-1])
    assert main(["report", *map(str, folders), "--out", str(tmp_path / "rep")]) == 0
    labels = [r["label"] for r in json.loads((tmp_path / "rep" / "report.json").read_text())["runs"]]
    assert labels == [f"{f.name} [fedavg]" for f in folders]


def test_without_out_the_report_gets_a_new_folder_under_reports(two_runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["report", *map(str, two_runs)]) == 0
    assert main(["report", *map(str, two_runs)]) == 0
    first, second = sorted((tmp_path / "reports").iterdir())  # never the earlier report's folder
    assert (first / "report.md").is_file() and (second / "report.md").is_file()


def _error(capsys, *argv) -> str:
    assert main(["report", *argv]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("raysim: error:") == 1
    return captured.err


def test_bad_input_is_one_message_exit_2_and_writes_nothing(two_runs, tmp_path, capsys):
    run = str(two_runs[0])
    out = tmp_path / "out"
    assert "no run folders given" in _error(capsys, "--out", str(out))
    err = _error(capsys, run, str(tmp_path / "nowhere"), "--out", str(out))
    assert f"{tmp_path / 'nowhere'}: no such folder" in err
    assert "not a run folder (no config.yaml)" in _error(capsys, run, str(tmp_path), "--out", str(out))
    parent = str(two_runs[0].parent)
    err = _error(capsys, parent, "--out", str(out))
    assert "holds run folders" in err and f"{parent}/*" in err
    assert "given more than once" in _error(capsys, run, run, "--out", str(out))
    assert not out.exists()  # nothing written while any input is bad

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("name: x\n")
    assert "no rounds.parquet" in _error(capsys, str(unfinished))
    (unfinished / "rounds.parquet").write_text("not parquet")
    assert "unreadable run folder" in _error(capsys, str(unfinished))

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert "is a file" in _error(capsys, run, "--out", str(a_file))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.md").write_text("mine too")
    assert "not empty" in _error(capsys, run, "--out", str(full))
    assert a_file.read_text() == "mine" and [p.name for p in full.iterdir()] == ["keep.md"]
    assert (full / "keep.md").read_text() == "mine too"
