"""Two pools on a real two-node cluster on this machine (tests/ray_nodes.py): the head
declares a fake GPU and the custom resource gpu_group, the other node the custom resource
slow_group, and the test model (tests/pool_speed_model.py) sleeps 4x longer per example on
a worker holding slow_group. Each pool's workers land on their node with their resources,
both pools run clients, and the measured-throughput split balances the pools' busy time
where the predicted-cost split leaves the slow pool running about 4x longer.

Bound stated: from round 3 on (after two measured rounds) the busier pool's busiest worker
is busy at most 1.6x as long as the other pool's; the predicted-cost split, on the same
cluster, is at least 2.5x. Sleep-dominated work keeps both numbers steady on a loaded machine."""
from __future__ import annotations

import pytest
from ray_nodes import start_cluster, stop_cluster
from test_multinode import _assert_same_run, _driver, _final_weights, _finish, _in_process

from raysim.results.cluster_log import WORKERS_FILE
from raysim.results.round_log import read_rounds
from raysim.results.run_dir import read_jsonl

POOLS = [
    {"name": "gpu", "num_cpus_per_worker": 0.5, "num_gpus_per_worker": 0.5, "resources": {"gpu_group": 1},
     "num_workers": "fill", "profiles": ["datacenter_gpu"]},
    {"name": "cpu", "num_cpus_per_worker": 0.5, "resources": {"slow_group": 1}, "num_workers": "fill"},
]
EXTRA = dict(rounds=5, model={"name": "pool_speed_model:build"}, data={"num_clients": 32},
             clients={"per_round": 24, "local_epochs": 2}, eval={"every": 5, "max_clients": 4},
             devices={"mix": {"laptop": 0.8, "datacenter_gpu": 0.2}, "use_availability": False})
MEASURED_BOUND, PREDICTED_AT_LEAST = 1.6, 2.5


@pytest.fixture
def cluster():
    c = start_cluster(worker_nodes=1, head={"GPU": 1, "gpu_group": 2}, nodes={"slow_group": 2})
    try:
        yield c
    finally:
        stop_cluster(c)


def _imbalance(row: dict) -> float:
    a, b = row["pool_gpu_busy_s"], row["pool_cpu_busy_s"]
    return max(a, b) / min(a, b)


def _train_rows(run_dir):
    return sorted((r for r in read_rounds(run_dir) if r["phase"] == "train"), key=lambda r: r["round"])


def test_two_pools_on_their_nodes_balanced_by_measured_throughput(cluster, small_config, tmp_path):
    backend = {"name": "ray", "address": cluster.address, "clients_per_call": 2, "pools": POOLS}
    for sub in ("measured", "predicted"):
        (tmp_path / sub).mkdir()
    measured_dir, _ = _finish(_driver(cluster, small_config(backend=backend, **EXTRA), tmp_path / "measured"))
    predicted_dir, _ = _finish(_driver(cluster, small_config(backend=dict(backend, balance="predicted"), **EXTRA),
                                       tmp_path / "predicted"))

    workers = read_jsonl(measured_dir / WORKERS_FILE)
    by_pool = {p: [w for w in workers if w["pool"] == p] for p in ("gpu", "cpu")}
    assert len(by_pool["gpu"]) == 2 and len(by_pool["cpu"]) == 2, workers
    gpu_node, cpu_node = {w["node"] for w in by_pool["gpu"]}, {w["node"] for w in by_pool["cpu"]}
    assert len(gpu_node) == 1 and len(cpu_node) == 1 and gpu_node != cpu_node  # each pool on its own node
    for w in by_pool["gpu"]:
        assert w["gpus"] == 0.5 and w["gpu_ids"] == ["0"] and w["resources"] == {"gpu_group": 1.0}
    for w in by_pool["cpu"]:
        assert w["gpus"] == 0.0 and w["gpu_ids"] == [] and w["resources"] == {"slow_group": 1.0}

    rows, baseline = _train_rows(measured_dir), _train_rows(predicted_dir)
    for r in rows + baseline:
        assert r["pool_gpu_clients"] > 0 and r["pool_cpu_clients"] > 0, r  # both pools busy every round
        assert r["pool_gpu_workers"] == 2 and r["pool_cpu_workers"] == 2
    measured = [_imbalance(r) for r in rows[2:]]
    predicted = [_imbalance(r) for r in baseline[2:]]
    assert max(measured) <= MEASURED_BOUND, (measured, predicted)
    assert min(predicted) >= PREDICTED_AT_LEAST, (measured, predicted)
    # The slow pool is given fewer clients once it was measured (about 1/5 of the work).
    assert all(r["pool_cpu_clients"] < r["pool_gpu_clients"] for r in rows[2:])
    assert rows[-1]["pool_gpu_speed"] > 2.5 * rows[-1]["pool_cpu_speed"]

    # The split moves float64 sums only: the run equals the in-process reference.
    want_rows, want_weights = _in_process(small_config, backend={"name": "inprocess"}, **EXTRA)
    _assert_same_run(rows, _final_weights(measured_dir), want_rows, want_weights)
