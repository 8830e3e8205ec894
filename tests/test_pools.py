"""Heterogeneous worker pools (backend.pools): the config's checks, pool sizing, the
throughput estimate and the balancer without Ray; then on the session's local Ray (2 CPUs,
2 fake GPUs) two pools with device-profile affinity, and a first pool that cannot be placed.
The multi-node run with custom resources and a slow pool: tests/test_pools_multinode.py."""
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import ray.cloudpickle
from test_ray_backend import _assert_same_aggregate

from conftest import plan_round
from raysim.config import ConfigError, PoolConfig, config_from_dict
from raysim.engine.backend import InProcessBackend
from raysim.engine.pools import SMOOTHING, Throughput, balance_pools, pool_targets, workers_fitting
from raysim.engine.ray_backend import RayBackend, balance, pool_sizes
from raysim.experiment import build_runner, execute, new_run

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

GPU_POOL = {"name": "gpu", "num_cpus_per_worker": 0.5, "num_gpus_per_worker": 0.5, "num_workers": 2,
            "profiles": ["datacenter_gpu"]}
CPU_POOL = {"name": "cpu", "num_cpus_per_worker": 0.5, "num_workers": "fill"}


def _backend_cfg(**backend):
    return config_from_dict({"backend": backend, "devices": {"mix": {"laptop": 0.5, "datacenter_gpu": 0.5}}}).backend


# --- configuration -------------------------------------------------------------------

@pytest.mark.parametrize("backend, message", [
    ({"pools": []}, "pools is empty"),
    ({"pools": [CPU_POOL], "num_workers": 2}, "pools replaces num_workers: give each pool its own"),
    ({"pools": [CPU_POOL], "num_gpus_per_worker": 0.5}, "pools replaces num_gpus_per_worker"),
    ({"pools": [CPU_POOL, CPU_POOL]}, "the pool name cpu is used more than once"),
    ({"pools": [dict(CPU_POOL, name="../x")]}, "pool name '../x' is not a plain name"),
    ({"pools": [dict(CPU_POOL, profiles=["phablet"])]}, "phablet"),
    ({"pools": [GPU_POOL, dict(CPU_POOL, profiles=["datacenter_gpu"])]},
     "profile datacenter_gpu is bound to both pool gpu and pool cpu"),
    ({"pools": [dict(CPU_POOL, profiles=["tablet"])]}, "backend.pools[cpu].profiles: tablet not in devices.mix"),
    ({"pools": [dict(CPU_POOL, resources={"GPU": 1})]}, "resources.GPU: set num_gpus_per_worker instead"),
    ({"pools": [dict(CPU_POOL, resources={"gpu_group": 0})]}, "resources.gpu_group=0: each worker must ask"),
    ({"pools": [dict(CPU_POOL, num_workers=0)]}, "num_workers must be at least 1 or 'fill'"),
    ({"pools": [dict(CPU_POOL, num_workers="all")]}, "num_workers"),
    ({"balance": "fastest"}, "balance"),
])
def test_bad_pools_are_refused_naming_the_setting(backend, message):
    with pytest.raises(ConfigError) as err:
        _backend_cfg(**backend)
    assert message in str(err.value)
    assert "backend" in str(err.value)


def test_the_flat_fields_mean_one_pool_and_pools_declare_their_resources():
    flat = _backend_cfg(num_workers=3, num_cpus_per_worker=2, num_gpus_per_worker=0.25)
    (only,) = flat.resolved_pools()
    assert (only.name, only.num_workers, only.demand()) == ("default", 3, {"CPU": 2.0, "GPU": 0.25})
    assert _backend_cfg().resolved_pools()[0].num_workers == "fill"
    pools = _backend_cfg(pools=[GPU_POOL, dict(CPU_POOL, resources={"cpu_group": 1})]).resolved_pools()
    assert [p.demand() for p in pools] == [{"CPU": 0.5, "GPU": 0.5}, {"CPU": 0.5, "cpu_group": 1.0}]


# --- sizing ----------------------------------------------------------------------------

def _pool(name, cpus=1.0, gpus=0.0, n="fill", **resources):
    return PoolConfig(name=name, num_cpus_per_worker=cpus, num_gpus_per_worker=gpus, num_workers=n,
                      resources=resources)


def test_fill_pools_take_what_is_left_scarce_resources_first():
    cluster = {"CPU": 8.0, "GPU": 1.0, "gpu_group": 4.0}
    # Listed CPU pool first: it still leaves the GPU pool its CPUs (scarce pools fill first).
    cpu, gpu = _pool("cpu"), _pool("gpu", gpus=0.25, gpu_group=1)
    assert pool_targets([cpu, gpu], cluster) == [4, 4]
    # A counted pool takes its share before any fill pool.
    assert pool_targets([cpu, gpu, _pool("fixed", n=2)], cluster) == [2, 4, 2]
    assert workers_fitting({"CPU": 0.3}, {"CPU": 0.9}) == 3  # 0.9 / 0.3 is 2.9999...: still 3
    assert workers_fitting({"CPU": 1, "gpu_group": 1}, {"CPU": 4}) == 0  # no such resource


def test_a_fill_pool_with_no_room_is_refused_naming_the_pool():
    cfg = _backend_cfg(pools=[dict(CPU_POOL, resources={"cpu_group": 1})])
    with pytest.raises(ValueError, match=r"backend.pools\[cpu\]: num_workers: fill, but the Ray cluster"):
        pool_sizes(cfg, {"CPU": 4.0})
    assert pool_sizes(cfg, {"CPU": 4.0, "cpu_group": 3.0}) == [3]


# --- throughput and balance --------------------------------------------------------------

def test_throughput_is_smoothed_per_pool_and_kind_and_falls_back():
    t = Throughput()
    assert t.speeds("train", ["a", "b"]) == [1.0, 1.0]  # nothing measured: equal
    t.observe("train", "a", cost=100, busy_s=1.0)
    assert t.speeds("train", ["a", "b"]) == [100.0, 100.0]  # b borrows the mean of the measured
    t.observe("train", "b", cost=100, busy_s=4.0)
    t.observe("train", "a", cost=300, busy_s=1.0)
    assert t.speeds("train", ["a", "b"]) == [SMOOTHING * 100 + (1 - SMOOTHING) * 300, 25.0]
    assert t.speeds("evaluate", ["a", "b"]) == t.speeds("train", ["a", "b"])  # borrowed until measured
    t.observe("evaluate", "a", cost=50, busy_s=0.0)  # nothing ran: no observation
    assert "evaluate" not in t.rates


def test_balance_gives_a_pool_work_in_proportion_to_its_speed():
    costs = np.full(40, 10.0)
    # Workers 0, 1 four times as fast as 2, 3.
    groups = balance_pools(costs, 4, speeds=[4.0, 4.0, 1.0, 1.0])
    loads = [costs[g].sum() for g in groups]
    assert loads == [160.0, 160.0, 40.0, 40.0]
    finish = [load / s for load, s in zip(loads, [4, 4, 1, 1])]
    assert max(finish) == min(finish)
    # Equal speeds are plain longest-first onto the least loaded.
    uneven = np.array([400.0, 10, 10, 10, 10, 10, 10, 10, 390])
    assert balance_pools(uneven, 2, speeds=[1.0, 1.0]) == balance_pools(uneven, 2) == balance(uneven, 2)
    assert all(g == sorted(g) for g in groups)


def test_balance_sends_bound_clients_only_to_their_pool_and_fills_around_them():
    costs = np.array([5.0, 50.0, 5.0, 40.0, 5.0, 5.0])
    allowed = [None, [0], None, [0], None, None]  # clients 1 and 3 bound to worker 0
    groups = balance_pools(costs, 2, allowed=allowed)
    assert 1 in groups[0] and 3 in groups[0]
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert groups[1] == [0, 2, 4, 5]  # every free client on the other worker: worker 0 is full
    with_speed = balance_pools(costs, 2, speeds=[10.0, 1.0], allowed=allowed)
    assert {1, 3} <= set(with_speed[0])


# --- on the session's local Ray ----------------------------------------------------------

uses_ray = pytest.mark.usefixtures("ray_cluster")


def _recording_runner(cfg, population, log_dir, dataset, device):
    """A runner that writes, per client it trains, the pool and GPU ids of its worker."""
    runner = build_runner(cfg, population, dataset, device)
    real = runner.algorithm.client_update

    def update(model, data, task, broadcast):
        ctx = ray.get_runtime_context()
        line = {"client": task.client, "gpus": [str(g) for g in ray.get_gpu_ids()],
                "resources": ctx.get_assigned_resources()}
        with open(Path(log_dir) / f"{ctx.get_actor_id()}.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
        return real(model, data, task, broadcast)

    runner.algorithm.client_update = update
    return runner


@uses_ray
def test_two_pools_both_run_clients_and_bound_profiles_stay_on_their_pool(small_config, tmp_path):
    cfg = small_config(data={"num_clients": 24}, clients={"per_round": 24},
                       devices={"mix": {"laptop": 0.5, "datacenter_gpu": 0.5}, "use_availability": False},
                       backend={"name": "ray", "clients_per_call": 2, "pools": [GPU_POOL, CPU_POOL]})
    rnd = plan_round(cfg, 0, list(range(24)))
    want = InProcessBackend(rnd.runner, threads=1).run(rnd.plan.tasks, rnd.plan.broadcast)
    log_dir = tmp_path / "ran"
    log_dir.mkdir()
    pop, logs = rnd.population, str(log_dir)  # the closure must not hold conftest's Round
    backend = RayBackend(lambda d, dev: _recording_runner(cfg, pop, logs, d, dev), rnd.dataset, cfg.backend, pop)
    try:
        info = backend.worker_info()
        got = backend.run(rnd.plan.tasks, rnd.plan.broadcast)
        pool_info = backend.pool_info()
    finally:
        backend.close()
    # 2 GPU workers (0.5 GPU each); the CPU pool fills the CPU they left: 1 / 0.5.
    assert sorted((i["pool"], i["resources"].get("GPU", 0.0), len(i["gpu_ids"])) for i in info) == [
        ("cpu", 0.0, 0), ("cpu", 0.0, 0), ("gpu", 0.5, 1), ("gpu", 0.5, 1)]
    _assert_same_aggregate(got, want)  # the split does not change the sums beyond float64 order
    ran = [json.loads(line) for f in log_dir.iterdir() for line in f.read_text().splitlines()]
    assert sorted(r["client"] for r in ran) == sorted(t.client for t in rnd.plan.tasks)  # each once
    on_gpu = {r["client"] for r in ran if r["gpus"]}
    bound = {c for c in range(24) if rnd.population.profile(c).name == "datacenter_gpu"}
    assert bound and bound <= on_gpu  # affinity: every datacenter_gpu client on a GPU worker
    assert on_gpu - bound  # the GPU pool also took unbound clients (it was not idle otherwise)
    assert {r["client"] for r in ran if not r["gpus"]}, "the CPU pool ran no client"
    assert pool_info["pool_gpu_workers"] == 2 and pool_info["pool_cpu_workers"] == 2
    assert pool_info["pool_gpu_clients"] + pool_info["pool_cpu_clients"] == 24
    assert pool_info["pool_gpu_busy_s"] > 0 and pool_info["pool_cpu_busy_s"] > 0


@uses_ray
def test_a_pool_no_node_can_hold_is_refused_at_once_and_leaves_no_run_folder(small_config):
    cfg = small_config(backend={"name": "ray", "pools": [
        CPU_POOL, {"name": "tpu", "num_cpus_per_worker": 0.5, "resources": {"tpu_slice": 1}, "num_workers": 1}]})
    run_dir = new_run(cfg)
    start = time.monotonic()
    with pytest.raises(ConfigError) as err:
        execute(cfg, run_dir, quiet=True)
    assert time.monotonic() - start < cfg.backend.placement_timeout_s
    assert "backend.pools[tpu]: a worker asks for {CPU: 0.5, tpu_slice: 1} and no node of the Ray cluster" \
        in str(err.value)
    assert not run_dir.exists()


@ray.remote(num_cpus=2)
class _Hog:
    """Holds both of the session cluster's CPUs."""

    def ping(self):
        return True


@uses_ray
def test_a_first_pool_that_finds_no_free_room_ends_within_the_placement_timeout(small_config):
    cfg = small_config(backend={"name": "ray", "num_workers": 2, "placement_timeout_s": 2})
    rnd = plan_round(cfg, 0, [0, 1])
    pop = rnd.population
    hog = _Hog.remote()
    ray.get(hog.ping.remote())
    try:
        start = time.monotonic()
        backend = RayBackend(lambda d, dev: build_runner(cfg, pop, d, dev), rnd.dataset, cfg.backend)
        with pytest.raises(ConfigError) as err:
            backend.wait_ready()
        waited = time.monotonic() - start
        backend.close()
    finally:
        ray.kill(hog)
    assert 2 <= waited < 15, waited  # the old backend waited here for ever
    assert ("backend: no node took 2 workers of {CPU: 1} within backend.placement_timeout_s=2 s "
            "(the cluster has {CPU: 0} of {CPU: 2} free)") in str(err.value)


@uses_ray
def test_a_first_pool_placed_in_part_runs_with_what_was_placed_and_says_so(small_config, capfd):
    cfg = small_config(backend={"name": "ray", "placement_timeout_s": 2, "pools": [
        {"name": "big", "num_cpus_per_worker": 1, "num_workers": 3}]})
    rnd = plan_round(cfg, 0, [0, 1, 2, 3])
    pop = rnd.population
    backend = RayBackend(lambda d, dev: build_runner(cfg, pop, d, dev), rnd.dataset, cfg.backend)
    try:
        backend.wait_ready()
        got = backend.run(rnd.plan.tasks, rnd.plan.broadcast)
        size = backend.size
    finally:
        backend.close()
    assert size == 2 and got.train.done == 4
    err = capfd.readouterr().err
    assert "backend.pools[big]: no node took 1 worker of {CPU: 1} within backend.placement_timeout_s=2 s" in err
    assert "running with the 2 placed" in err


def _hanging_build(dataset, device):
    time.sleep(3600)  # a worker whose build never ends (a hung import, a stuck filesystem)


@uses_ray
def test_a_worker_whose_build_hangs_is_given_up_within_the_build_timeout(small_config):
    """Placed but never built: past placement_timeout_s + build_timeout_s the pool gives it up
    with one message naming build_timeout_s, instead of waiting for ever."""
    cfg = small_config(backend={"name": "ray", "num_workers": 1, "placement_timeout_s": 1, "build_timeout_s": 2})
    rnd = plan_round(cfg, 0, [0])
    backend = RayBackend(_hanging_build, rnd.dataset, cfg.backend)
    start = time.monotonic()
    try:
        with pytest.raises(ConfigError) as err:
            backend.wait_ready()
        waited = time.monotonic() - start
    finally:
        backend.close()
    assert 3 <= waited < 20, waited
    assert "1 placed worker did not build within backend.build_timeout_s=2 s" in str(err.value)
