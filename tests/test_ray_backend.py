"""The Ray backend against the in-process reference: same aggregate, placement, retries."""
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray.cloudpickle
import torch
from ray.exceptions import ObjectLostError

from conftest import plan_round
from raysim.data.loading import load_federated_dataset
from raysim.engine.api import ClientTask
from raysim.engine.backend import InProcessBackend
from raysim.engine.ray_backend import (
    RayBackend,
    balance,
    node_tree_reduce,
    pool_size,
    predicted_cost,
    tree_reduce,
)
from raysim.engine.stats import Partial, WeightedSum, merge_all
from raysim.experiment import build_runner, execute, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint
from raysim.results.round_log import read_rounds

# Workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("ray_cluster")


def _round(cfg, clients=None):
    ds = load_federated_dataset(cfg.data, cfg.seed)
    rnd = plan_round(cfg, 0, clients or list(range(ds.num_clients)))
    return rnd.dataset, rnd.population, InProcessBackend(rnd.runner, threads=1), rnd.plan


def _measured(counters) -> dict:
    """The counters without the measured training wall time, which no two runs share."""
    return {k: v for k, v in asdict(counters).items() if k != "train_wall_s"}


def _assert_same_aggregate(got: Partial, want: Partial):
    for kind in ("train", "explore", "evaluate"):
        assert _measured(got.counters(kind)) == pytest.approx(_measured(want.counters(kind)), rel=1e-12)
    assert (got.train.train_wall_s > 0) == (want.train.train_wall_s > 0)  # both measured the clients' training time
    assert got.train.sim_time_s == want.train.sim_time_s
    assert got.metrics == pytest.approx(want.metrics, rel=1e-12)
    assert got.stats.keys() == want.stats.keys()
    for name, s in want.stats.items():
        assert got.stats[name].weight == s.weight
        for k, v in s.total.items():
            # float64 sums grouped per worker: equal far below float32 resolution
            torch.testing.assert_close(got.stats[name].total[k], v, rtol=1e-12, atol=1e-15)


def _crashing_runner(cfg, population, marker, crash_client, dataset, device):
    """A runner whose worker process dies (os._exit) on `crash_client`; only once when `marker` is a path."""
    runner = build_runner(cfg, population, dataset, device)
    real = runner.algorithm.client_update

    def update(model, data, task, broadcast):
        if task.client == crash_client and (marker is None or not os.path.exists(marker)):
            if marker is not None:
                Path(marker).touch()
            os._exit(1)
        return real(model, data, task, broadcast)

    runner.algorithm.client_update = update
    return runner


def _backend(cfg, ds, factory, **overrides):
    return RayBackend(factory, ds, cfg.backend.model_copy(update=overrides))


def test_ray_aggregate_equals_in_process_aggregate(small_config):
    cfg = small_config(data={"num_clients": 20}, backend={"name": "ray", "num_workers": 2, "clients_per_call": 3})
    ds, pop, runner, plan = _round(cfg)
    want = runner.run(plan.tasks, plan.broadcast)
    backend = _backend(cfg, ds, lambda d, dev: build_runner(cfg, pop, d, dev))
    try:
        got = backend.run(plan.tasks, plan.broadcast)
        info = backend.worker_info()
        assert backend.pool_info()["workers"] == 2 and 0 < backend.pool_info()["busy_fraction"] <= 1
    finally:
        backend.close()
    assert got.train.done == len(plan.tasks) == 20
    _assert_same_aggregate(got, want)
    # Data read from the object store in place, torch pinned to each worker's one CPU.
    assert all(i["data_zero_copy"] and i["threads"] == 1 and i["device"] == "cpu" for i in info)
    assert len({i["pid"] for i in info}) == 2


def test_image_clients_train_identically_on_ray_and_in_process(small_config, fashion_mnist_dir):
    """Convolutions pick kernels by tensor strides: images shipped through the object store
    must train exactly like the driver's copy (they once differed by 1e-4 in loss). The
    full training set as loaded, not a subsample: subsampling copies into fresh arrays."""
    cfg = small_config(data={"dataset": "fashion_mnist", "path": str(fashion_mnist_dir), "num_clients": 300,
                             "partition": {"scheme": "iid"}},
                       model={"name": "twocnn"}, backend={"name": "ray", "num_workers": 2, "clients_per_call": 1})
    ds, pop, runner, plan = _round(cfg, clients=[0, 1, 2, 3])
    backend = _backend(cfg, ds, lambda d, dev: build_runner(cfg, pop, d, dev))
    try:
        got = backend.run(plan.tasks, plan.broadcast)
    finally:
        backend.close()
    _assert_same_aggregate(got, runner.run(plan.tasks, plan.broadcast))


def test_worker_dying_mid_round_is_replaced_and_its_clients_rerun_once(small_config, tmp_path):
    cfg = small_config(data={"num_clients": 16}, backend={"name": "ray", "num_workers": 2, "clients_per_call": 2})
    ds, pop, runner, plan = _round(cfg)
    want = runner.run(plan.tasks, plan.broadcast)
    crash_client = plan.tasks[9].client  # mid-way through some worker's list
    marker = str(tmp_path / "crashed")
    backend = _backend(cfg, ds, lambda d, dev: _crashing_runner(cfg, pop, marker, crash_client, d, dev))
    try:
        got = backend.run(plan.tasks, plan.broadcast)
        assert backend.pool_info()["workers_replaced"] == 1
        again = backend.run(plan.tasks, plan.broadcast)  # the replacement serves later rounds
    finally:
        backend.close()
    assert os.path.exists(marker)
    assert got.failures == [] and got.train.failed == 0
    _assert_same_aggregate(got, want)  # nothing lost, nothing counted twice
    _assert_same_aggregate(again, want)


class _LosesOnePartial(RayBackend):
    """Its first merge finds a partial gone, as when a node dies holding a finished sum."""

    lost = 0

    def _reduce(self, leaves):
        if not self.lost:
            self.lost += 1
            raise ObjectLostError("00" * 28, None, "a test")
        return super()._reduce(leaves)


def test_a_partial_lost_before_the_merge_reruns_the_rounds_clients_once(small_config, capfd):
    cfg = small_config(data={"num_clients": 12}, backend={"name": "ray", "num_workers": 2, "clients_per_call": 3})
    ds, pop, runner, plan = _round(cfg)
    backend = _LosesOnePartial(lambda d, dev: build_runner(cfg, pop, d, dev), ds, cfg.backend)
    try:
        got = backend.run(plan.tasks, plan.broadcast)
    finally:
        backend.close()
    assert backend.lost == 1 and got.failures == [] and got.train.done == len(plan.tasks)
    _assert_same_aggregate(got, runner.run(plan.tasks, plan.broadcast))
    assert capfd.readouterr().err.count("the merge lost a partial (ObjectLostError)") == 1


def test_worker_dying_every_time_fails_its_clients_after_bounded_retries(small_config):
    cfg = small_config(data={"num_clients": 12},
                       backend={"name": "ray", "num_workers": 2, "clients_per_call": 2, "max_retries": 1})
    ds, pop, runner, plan = _round(cfg)
    crash_client = plan.tasks[5].client
    backend = _backend(cfg, ds, lambda d, dev: _crashing_runner(cfg, pop, None, crash_client, d, dev))
    try:
        got = backend.run(plan.tasks, plan.broadcast)
        assert backend.pool_info()["workers_replaced"] == 2  # first death + one retry
    finally:
        backend.close()
    t = got.train
    failed = sorted(f.client for f in got.failures)
    assert crash_client in failed and "died 2 times" in got.failures[0].reason
    assert 0 < len(failed) < len(plan.tasks)
    assert t.done + t.failed == len(plan.tasks)  # every client accounted once
    assert t.failed == len(failed)
    t.failed = 0  # checked above; everything else must be what the survivors add up to alone
    # The surviving worker's clients aggregate exactly as they would alone.
    survivors = [task for task in plan.tasks if task.client not in failed]
    _assert_same_aggregate(got, runner.run(survivors, plan.broadcast))


def test_fractional_gpu_workers_share_the_declared_gpus(small_config):
    cfg = small_config(backend={"name": "ray", "num_cpus_per_worker": 0.5, "num_gpus_per_worker": 0.5})
    ds, pop, _, _ = _round(cfg)
    backend = _backend(cfg, ds, lambda d, dev: build_runner(cfg, pop, d, dev))
    try:
        info = backend.worker_info()
        size = backend.size
    finally:
        backend.close()
    assert size == 4  # 2 fake GPUs / 0.5, and 2 CPUs / 0.5
    assert Counter(g for i in info for g in i["gpu_ids"]) == {"0": 2, "1": 2}
    # Fake GPUs have no CUDA behind them: workers fall back to the CPU with one thread.
    assert all(i["device"] == ("cuda" if torch.cuda.is_available() else "cpu") and i["threads"] == 1 for i in info)


def test_pool_size_follows_cluster_resources(small_config):
    b = small_config().backend
    assert pool_size(b.model_copy(update={"num_cpus_per_worker": 1.0}), {"CPU": 8.0}) == 8
    assert pool_size(b.model_copy(update={"num_gpus_per_worker": 0.25}), {"CPU": 16.0, "GPU": 1.0}) == 4
    assert pool_size(b.model_copy(update={"num_workers": 3}), {"CPU": 1.0}) == 3
    with pytest.raises(ValueError, match="no GPU"):
        pool_size(b.model_copy(update={"num_gpus_per_worker": 0.5}), {"CPU": 4.0})
    with pytest.raises(ValueError, match="fits no worker"):
        pool_size(b.model_copy(update={"num_cpus_per_worker": 4.0}), {"CPU": 2.0})


def test_balance_spreads_predicted_cost_not_client_counts():
    sizes = np.array([400, 10, 10, 10, 10, 10, 10, 10, 390])
    tasks = [ClientTask(0, c, 0, "train", epochs=1) for c in range(len(sizes))]
    costs = predicted_cost(tasks, sizes, np.zeros_like(sizes))
    groups = balance(costs, 2)
    loads = [costs[g].sum() for g in groups]
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    assert max(loads) - min(loads) <= costs.max() * 0.1  # round-robin would give 0,2,4,6,8 = 900 vs 100
    assert (0 in groups[0]) != (8 in groups[0])  # the two big clients split up
    assert all(g == sorted(g) for g in groups)


@ray.remote(num_cpus=0)
def _merge_task(*partials):
    return merge_all(list(partials))


# Leaf values whose float64 sum depends on the order within each group of three:
# (1 + 2**60) - 2**60 == 0 but (-2**60 + 2**60) + 1 == 1, and likewise for 2**55 and 3.
ORDER_LEAVES = [1.0, 2.0**60, -(2.0**60), 2.0**55, 3.0, -(2.0**55), 5.0]


def _order_leaves() -> list[Partial]:
    parts = []
    for i, value in enumerate(ORDER_LEAVES):
        p = Partial()
        p.add_stats({"d": WeightedSum.of({"w": torch.tensor([value], dtype=torch.float64)}, 1.0)})
        p.train.done += 1
        p.add_failure(0, i, "train", f"leaf {i}")  # the failure list records the merge order exactly
        parts.append(p)
    return parts


def _assert_merged_in_tree_order(root: Partial):
    """Fan-in 3 over 7 leaves, written out: left to right within each group, then over groups."""
    assert [f.client for f in root.failures] == list(range(7))
    v = ORDER_LEAVES
    want = (((v[0] + v[1]) + v[2]) + ((v[3] + v[4]) + v[5])) + v[6]
    reversed_groups = (((v[2] + v[1]) + v[0]) + ((v[5] + v[4]) + v[3])) + v[6]
    assert want == 5.0 and reversed_groups == 10.0  # the values tell these orders apart
    assert root.stats["d"].total["w"].item() == want
    assert root.train.done == 7 and root.stats["d"].weight == 7.0


def test_tree_reduce_is_fixed_order_and_complete():
    refs = [ray.put(p) for p in _order_leaves()]
    nodes = []

    def merge(node, group):
        nodes.append((node, len(group)))
        return _merge_task.remote(*group)

    a = ray.get(tree_reduce(refs, 3, merge))
    assert nodes == [(0, 3), (1, 3), (3, 3)]  # 7 leaves: two full groups, the last leaf passes up, then the root
    _assert_merged_in_tree_order(a)
    b = ray.get(tree_reduce(refs, 3, merge))
    assert torch.equal(a.stats["d"].total["w"], b.stats["d"].total["w"])


def test_node_tree_reduce_merges_each_node_first_in_a_fixed_order():
    """Leaves of nodes a and b interleaved: each node's leaves merge on that node, in their
    order, then the nodes' roots merge on the first node (a, which holds the first leaf)."""
    nodes = ["a", "b", "a", "b", "a", "b", "a"]
    refs = [ray.put(p) for p in _order_leaves()]
    merges = []

    def merge(node, group):
        merges.append((node, len(group)))
        return _merge_task.remote(*group)

    root = ray.get(node_tree_reduce(list(zip(nodes, refs, strict=True)), 3, merge))
    assert merges == [("a", 3), ("a", 2), ("b", 3), ("a", 2)]  # a: (0 2 4) then 6; b: (1 3 5); across
    assert [f.client for f in root.failures] == [0, 2, 4, 6, 1, 3, 5]
    v = ORDER_LEAVES
    want = (((v[0] + v[2]) + v[4]) + v[6]) + ((v[1] + v[3]) + v[5])
    assert root.stats["d"].total["w"].item() == want
    again = ray.get(node_tree_reduce(list(zip(nodes, refs, strict=True)), 3, merge))
    assert torch.equal(root.stats["d"].total["w"], again.stats["d"].total["w"])
    # All on one node: exactly the single-node tree.
    single = ray.get(node_tree_reduce([("n", r) for r in refs], 3, lambda node, group: _merge_task.remote(*group)))
    _assert_merged_in_tree_order(single)


def test_the_pools_own_merge_keeps_the_tree_order(small_config):
    """The merge a run really uses: tree nodes on the pool's worker actors."""
    cfg = small_config(backend={"name": "ray", "num_workers": 2, "fan_in": 3})
    ds, pop, _, _ = _round(cfg)
    backend = _backend(cfg, ds, lambda d, dev: build_runner(cfg, pop, d, dev))
    try:
        root = backend._reduce([("n", ray.put(p)) for p in _order_leaves()])
    finally:
        backend.close()
    _assert_merged_in_tree_order(root)


def _final_weights(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir)).weights


@pytest.mark.parametrize("algorithm, model", [("fedavg", {"name": "logreg"}),
                                              ("autoflip", {"name": "mlp", "hidden": 16})])
def test_a_run_on_ray_matches_the_in_process_run(small_config, algorithm, model):
    extra = dict(rounds=3, model=model, algorithm={"name": algorithm, "pruning": {"ramp_rounds": 2}},
                 data={"num_clients": 16}, clients={"per_round": 6})
    results = {}
    for name in ("inprocess", "ray"):
        cfg = small_config(backend={"name": name, "num_workers": 2, "clients_per_call": 2}, **extra)
        run_dir = new_run(cfg)
        execute(cfg, run_dir)
        results[name] = (read_rounds(run_dir), _final_weights(run_dir))
    (rows_in, w_in), (rows_ray, w_ray) = results["inprocess"], results["ray"]
    for a, b in zip(rows_in, rows_ray, strict=True):
        for key in ("clients_done", "clients_dropped", "clients_failed", "flops_executed", "bytes_down", "bytes_up"):
            assert a[key] == b[key], key
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    assert all(r["workers"] == 2 for r in rows_ray if r["phase"] == "train")
    for k, v in w_in.items():
        torch.testing.assert_close(w_ray[k], v, rtol=1e-5, atol=1e-6)


def _kill_first_busy_worker(deadline_s: float, killed: list) -> None:
    """SIGKILL one of this test's Ray workers while it is inside a `run` call (mid-round)."""
    me = psutil.Process()
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not killed:
        for proc in me.children(recursive=True):
            try:
                if proc.cmdline()[:1] == ["ray::ClientWorker.run"]:
                    proc.kill()
                    killed.append(proc.pid)
                    return
            except psutil.Error:
                continue
        time.sleep(0.005)


def test_killing_a_worker_during_a_run_costs_a_retry_not_the_run(small_config):
    extra = dict(rounds=4, data={"num_clients": 24}, clients={"per_round": 12, "local_epochs": 3})
    ray_cfg = small_config(backend={"name": "ray", "num_workers": 2, "clients_per_call": 1}, **extra)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_first_busy_worker, args=(120.0, killed), daemon=True)
    killer.start()
    ray_dir = new_run(ray_cfg)
    execute(ray_cfg, ray_dir)
    killer.join(timeout=1)
    assert killed, "the run ended before a worker could be killed"
    rows = read_rounds(ray_dir)
    assert sum(r["workers_replaced"] for r in rows) == 1
    assert all(r["clients_failed"] == 0 and r["clients_done"] == r["clients_sampled"] for r in rows)
    ref_cfg = small_config(**extra)  # in-process
    ref_dir = new_run(ref_cfg)
    execute(ref_cfg, ref_dir)
    for k, v in _final_weights(ref_dir).items():
        torch.testing.assert_close(_final_weights(ray_dir)[k], v, rtol=1e-5, atol=1e-6)
