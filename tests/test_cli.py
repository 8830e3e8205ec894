"""The CLI as a user runs it (the default Ray backend, on the session's Ray instance)."""
import json
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from raysim.cli import main

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _only_run(parent):
    (run,) = list(parent.iterdir())
    return run


def test_run_with_overrides_writes_a_run_folder(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["run", "--set", "rounds=2", "--set", "data.num_clients=10", "--set", "clients.per_round=3",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    run = _only_run(out)
    assert "rounds: 2" in (run / "config.yaml").read_text()
    assert len(pq.read_table(run / "rounds.parquet")) == 2
    assert json.loads((run / "summary.json").read_text())["rounds"] == 2
    assert "final accuracy" in capsys.readouterr().out


def test_bad_field_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["run", "--set", "clients.optimiser.lr=1", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "clients.optimiser" in err and "optimizer" in err
    assert not out.exists()


def test_missing_dataset_names_path_and_how_to_get_it(tmp_path, capsys):
    rc = main(["run", "--set", "data.dataset=mnist", "--set", "data.partition.scheme=iid", "--set", f"data.path={tmp_path / 'nowhere'}",
               "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path / "nowhere") in err and "IDX" in err


def test_resume_extends_a_finished_run_and_refuses_what_would_change_the_past(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--set", "rounds=2", "--set", "data.num_clients=8", "--set", "clients.per_round=2",
                 "--out", str(out), "--no-progress"]) == 0
    run = _only_run(out)
    before = pq.read_table(run / "rounds.parquet").to_pylist()
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--no-progress"]) == 2  # finished: nothing to do
    assert "finished its 2 rounds" in capsys.readouterr().err
    assert pq.read_table(run / "rounds.parquet").to_pylist() == before  # nothing rewritten
    assert main(["run", "--resume", str(run), "--set", "model.name=mlp"]) == 2
    assert "would change the rounds already run" in capsys.readouterr().err
    assert main(["run", "--resume", str(run), "--set", "rounds=3", "--no-progress"]) == 0  # extended
    after = pq.read_table(run / "rounds.parquet").to_pylist()
    assert [r["round"] for r in after] == [1, 2, 3] and after[:2] == before
    assert "rounds: 3" in (run / "config.yaml").read_text()
    assert json.loads((run / "summary.json").read_text())["rounds"] == 3
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_an_address_where_no_ray_cluster_answers_fails_at_once_naming_it(tmp_path):
    # Its own process: this test session's Ray would otherwise be reused, whatever the address.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    proc = subprocess.run([sys.executable, "-m", "raysim.cli", "run", "--address", f"127.0.0.1:{port}",
                           "--set", "rounds=1", "--out", str(tmp_path), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"backend.address=127.0.0.1:{port}: no Ray cluster answers there" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing ran: no run folder is left behind


def test_plugins_lists_every_registry_from_the_registries(capsys):
    from raysim.algorithms import ALGORITHMS
    from raysim.devices import PROFILES

    assert main(["plugins"]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    assert lines["algorithm.name"].split(", ") == ALGORITHMS.names()  # autoflip's entry point included
    assert lines["devices.mix keys"].split(", ") == PROFILES.names()
    assert "twocnn" in lines["model.name"] and "dirichlet" in lines["data.partition.scheme"]
