"""A real multi-node Ray cluster on this machine (a head and worker nodes started with
`ray start --address`, one CPU each, token authentication on): workers spread over the
nodes and are recorded, partials merge per node first, a node lost mid-round costs
retries and never the run, and a node that joins is used from the next round.

The runs are driver processes of their own (tests/multinode_driver.py), so this pytest
process keeps its own local Ray for the other tests. Every wait is bounded: a
regression fails the test, it does not hang it."""
from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ray_nodes import start_cluster, stop_cluster, wait_for

from raysim.config import config_to_yaml
from raysim.experiment import execute, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint
from raysim.results.cluster_log import MERGES_FILE, WORKERS_FILE
from raysim.results.round_log import read_rounds
from raysim.results.run_dir import read_jsonl

DRIVER = Path(__file__).with_name("multinode_driver.py")
RUN_TIMEOUT_S = 240

# Small and seconds-long: logreg on the synthetic federation, a few clients per round.
EXTRA = dict(data={"num_clients": 16}, clients={"per_round": 8}, eval={"every": 1, "max_clients": 4})


def _final_weights(run_dir: Path) -> dict:
    return load_checkpoint(latest_checkpoint(run_dir)).weights


def _in_process(small_config, **extra) -> tuple[list[dict], dict]:
    cfg = small_config(**extra)
    run_dir = new_run(cfg)
    execute(cfg, run_dir, quiet=True)
    return read_rounds(run_dir), _final_weights(run_dir)


def _assert_same_run(rows: list[dict], weights: dict, want_rows: list[dict], want_weights: dict) -> None:
    """As the Ray-equals-in-process tests: same counts, accuracy to 1e-6, weights to float32 noise."""
    for a, b in zip(want_rows, rows, strict=True):
        for key in ("clients_sampled", "clients_done", "clients_dropped", "clients_failed", "flops_executed",
                    "bytes_down", "bytes_up"):
            assert a[key] == b[key], (b["round"], key)
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    for k, v in want_weights.items():
        torch.testing.assert_close(weights[k], v, rtol=1e-5, atol=1e-6)


def _driver(cluster, cfg, tmp_path: Path, pause_dir: Path | None = None) -> subprocess.Popen:
    config = tmp_path / "multinode.yaml"
    config.write_text(config_to_yaml(cfg))
    args = [sys.executable, str(DRIVER), str(config), str(tmp_path / "runs")]
    if pause_dir is not None:
        args.append(str(pause_dir))
    return subprocess.Popen(args, env=cluster.env, cwd=Path(__file__).parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[Path, str]:
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run hung (over {RUN_TIMEOUT_S} s):\n{err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    return Path(out.strip().splitlines()[-1]), err


@pytest.fixture
def cluster():
    c = start_cluster(worker_nodes=1)
    try:
        yield c
    finally:
        stop_cluster(c)


def test_a_two_node_run_spreads_workers_records_them_and_merges_per_node(cluster, small_config, tmp_path):
    # Four half-CPU workers on two one-CPU nodes: two per node, so each node has something to merge.
    backend = {"name": "ray", "address": cluster.address, "num_workers": 4, "num_cpus_per_worker": 0.5,
               "clients_per_call": 2, "fan_in": 4}
    cfg = small_config(rounds=3, backend=backend, **EXTRA)
    run_dir, _ = _finish(_driver(cluster, cfg, tmp_path))

    workers = read_jsonl(run_dir / WORKERS_FILE)
    assert len(workers) == 4 and len({w["pid"] for w in workers}) == 4
    nodes = sorted({w["node"] for w in workers})
    assert len(nodes) == 2 and all(sum(w["node"] == n for w in workers) == 2 for n in nodes)
    assert len({ipaddress.ip_address(w["node_ip"]) for w in workers}) == 1  # two nodes of one machine
    for w in workers:
        assert w["cpus"] == 0.5 and w["gpus"] == 0.0 and w["device"] == "cpu"
        assert w["start_round"] == 1

    merges = read_jsonl(run_dir / MERGES_FILE)
    rows = read_rounds(run_dir)
    for r in range(1, 4):
        train = [m for m in merges if m["round"] == r and m["phase"] == "train"]
        # One merge on each node of its own two partials, then the root: one partial crosses.
        assert [(m["inputs"], m["remote_inputs"]) for m in train] == [(2, 0), (2, 0), (2, 1)], train
        assert {m["node"] for m in train[:2]} == set(nodes) and train[2]["node"] == train[0]["node"]
        row = next(x for x in rows if x["round"] == r)
        assert row["cross_node_partials"] == 1 and row["merge_nodes"] == 2 and row["nodes"] == 2

    want_rows, want_weights = _in_process(small_config, rounds=3, backend={"name": "inprocess"}, **EXTRA)
    _assert_same_run(rows, _final_weights(run_dir), want_rows, want_weights)


def _running_on(cluster, node: str) -> bool:
    """A ClientWorker of `node` is inside a `run` call: the round is under way there."""
    for pid in cluster.processes(node):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"ray::ClientWorker.run":
                return True
        except OSError:
            continue
    return False


def test_a_node_lost_mid_round_costs_retries_and_a_node_that_joins_is_used(cluster, small_config, tmp_path):
    rounds = 8
    extra = dict(EXTRA, clients={"per_round": 8, "local_epochs": 3}, rounds=rounds)
    backend = {"name": "ray", "address": cluster.address, "num_workers": 2, "clients_per_call": 1,
               "placement_timeout_s": 5}
    pause = tmp_path / "pause"
    pause.mkdir()
    proc = _driver(cluster, small_config(backend=backend, **extra), tmp_path, pause)
    try:
        wait_for(lambda: proc.poll() is not None or _running_on(cluster, "node1"), 120,
                 "a worker of node1 to run clients")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        killed = cluster.kill_node("node1")
        assert killed
        # The old backend waited here for ever: its replacement never found a CPU.
        wait_for(lambda: (pause / "paused").exists() or proc.poll() is not None, 90,
                 "a round to finish on the shrunken pool")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        cluster.add_node("node2")
        (pause / "resume").touch()
        run_dir, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert err.count("the worker pool shrinks to 1 worker") == 1, err
    assert err.count("the worker pool grows from 1 to 2 workers") == 1, err
    rows = sorted((r for r in read_rounds(run_dir) if r["phase"] == "train"), key=lambda r: r["round"])
    sizes = [r["workers"] for r in rows]
    shrunk = sizes.index(1)
    assert sizes[:shrunk] == [2] * shrunk and sizes[-1] == 2, sizes
    workers = read_jsonl(run_dir / WORKERS_FILE)
    assert len(workers) == 3
    joined = workers[2]
    assert joined["node"] not in {w["node"] for w in workers[:2]} and joined["start_round"] > rows[shrunk]["round"]
    # Every client accounted once, and the aggregate is the undisturbed run's.
    want_rows, want_weights = _in_process(small_config, backend={"name": "inprocess"}, **extra)
    _assert_same_run(rows, _final_weights(run_dir), want_rows, want_weights)
