"""The Ray backend: virtual clients on a pool of worker actors, merged through a tree.

- Each worker actor holds one ClientRunner (model cache, algorithm) and reads the
  dataset from the object store without copying; it runs many virtual clients.
- Workers come in pools (`backend.pools`, or the one pool the flat fields describe),
  each pool's workers declaring that pool's CPUs, GPUs and custom resources.
- The driver assigns a round's clients to workers by predicted cost (longest
  first onto the worker that would finish it soonest, weighing each pool's measured
  throughput; a client whose device profile is bound to a pool only to that pool's
  workers; raysim/engine/pools.py), feeds each worker `clients_per_call` clients at a
  time, two calls deep, and watches them with `ray.wait`.
- Every worker sums its clients into one Partial it keeps until the round ends;
  the partials merge through a tree of calls on the pool's actors with a fixed
  fan-in and order, first on each node, then across nodes (one partial per node
  crosses the network), so the driver only ever receives the root.
- A worker that dies is replaced and all of its clients for the round rerun
  (its running sum died with it, so nothing is counted twice), at most
  `max_retries` times; after that its clients are reported as failed.
- A replacement that no node took within `placement_timeout_s` (its node is
  gone, and the CPU with it) is given up: the pool shrinks and the clients rerun on
  the next surviving worker of its pool that is free. Before each round each pool grows
  back into resources the cluster has free (a node joined), up to its `num_workers`.
- The first pool's workers, too, must be placed on a node within `placement_timeout_s`
  (building any worker may take longer); a pool no node can hold is refused at once.

This is the only module that imports ray.
"""
from __future__ import annotations

import heapq
import ipaddress
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, RayError

from raysim.config import BackendConfig, ConfigError, PoolConfig
from raysim.data.federated import FederatedDataset
from raysim.devices import Population, device_profile
from raysim.engine.api import Broadcast, ClientTask
from raysim.engine.backend import Backend
from raysim.engine.pools import (
    Throughput,
    balance_pools,
    fill_order,
    format_resources,
    pool_targets,
    workers_fitting,
)
from raysim.engine.ray_auth import own_auth_message
from raysim.engine.runner import ClientRunner
from raysim.engine.stats import Partial, merge_all
from raysim.telemetry.ray_metrics import WorkerMetrics

# (dataset, device) -> runner; must pickle (a module-level function or functools.partial).
RunnerFactory = Callable[[FederatedDataset, str], ClientRunner]

# Per-client fixed cost in example-equivalents (model load, data slicing, encoding):
# without it, tiny clients would look free and pile onto one worker.
CLIENT_OVERHEAD_EXAMPLES = 20
PIPELINE_DEPTH = 2  # calls in flight per worker: the next is queued while one runs


class ClientWorker:
    """A Ray actor running virtual clients; the round's running sum lives here."""

    def __init__(self, index: int, runner_factory: RunnerFactory, dataset: FederatedDataset, threads: int,
                 pool: str = "default"):
        torch.set_num_threads(threads)  # its share of the node, not every core (and what in-process uses)
        gpus = ray.get_gpu_ids()
        self.device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
        self.index = index
        self.pool = pool
        self.dataset = dataset  # deserialised from the object store: numpy views, no copy
        self.runner = runner_factory(dataset, self.device)
        self.runner.warm_up()
        self.key: tuple | None = None
        self.partial = Partial()
        self.clients = 0
        self.broadcast: Broadcast | None = None
        self.metrics = WorkerMetrics(str(index))  # Ray metrics per worker, never per client

    def info(self) -> dict:
        x = self.dataset.shared_array
        return {
            "index": self.index, "pool": self.pool, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(), "resources": ray.get_runtime_context().get_assigned_resources(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": self.device,
            "threads": torch.get_num_threads(), "data_zero_copy": not x.flags.owndata and not x.flags.writeable,
        }

    def run(self, key: tuple, broadcast_box: list, tasks: list[ClientTask]) -> float:
        """Add `tasks` to the running sum for `key` (round, attempt); returns busy seconds."""
        start = time.perf_counter()
        if key != self.key:
            # The broadcast arrives boxed so Ray passes the reference, fetched once per round.
            self.key, self.partial, self.clients = key, Partial(), 0
            self.broadcast = ray.get(broadcast_box[0])
        self.runner.run(tasks, self.broadcast, into=self.partial)
        self.clients += len(tasks)
        busy = time.perf_counter() - start
        self.metrics.record(len(tasks), busy)
        return busy

    def merge(self, *partials: Partial) -> Partial:
        """One node of the aggregation tree. Merges run on the pool's own (already started,
        idle at round end) actors: a plain Ray task would start a fresh process to do it."""
        return merge_all(list(partials))

    def finish(self, key: tuple) -> tuple[int, Partial]:
        """The clients summed for `key` and their Partial; the worker forgets both."""
        if key != self.key:  # e.g. a replacement that never saw this round's calls
            return 0, Partial()
        out = (self.clients, self.partial)
        self.key, self.partial, self.clients, self.broadcast = None, Partial(), 0, None
        return out


def tree_reduce(refs: list, fan_in: int, merge: Callable[[int, list], object]):
    """Merge partial references in fixed order, `fan_in` at a time, level by level; returns
    the root's reference. `merge(node, group)` submits one tree node: a Ray task merging
    `group` (references, resolved where it runs) and returning the merged Partial's reference."""
    if not refs:
        return ray.put(Partial())
    node = 0
    while len(refs) > 1:
        level = []
        for i in range(0, len(refs), fan_in):
            group = refs[i:i + fan_in]
            level.append(group[0] if len(group) == 1 else merge(node, group))
            node += 1
        refs = level
    return refs[0]


def predicted_cost(tasks: Sequence[ClientTask], train_sizes: np.ndarray, holdout_sizes: np.ndarray) -> np.ndarray:
    """Real compute a worker spends per task, in example-equivalents: data size times epochs.

    Device profiles do not enter: they throttle simulated time, while a worker
    spends the same real time on a client whichever phone it stands for."""
    n = len(tasks)
    clients = np.fromiter((t.client for t in tasks), np.int64, n)
    evaluate = np.fromiter((t.kind == "evaluate" for t in tasks), bool, n)
    epochs = np.fromiter((t.epochs for t in tasks), np.int64, n)
    examples = np.where(evaluate, np.asarray(holdout_sizes)[clients], np.asarray(train_sizes)[clients] * epochs)
    return (CLIENT_OVERHEAD_EXAMPLES + examples).astype(float)


def balance(costs: np.ndarray, workers: int) -> list[list[int]]:
    """Longest-processing-time-first: each task (dearest first, ties by position) onto the
    least-loaded worker (ties to the lowest index). Each worker's tasks stay in their
    original order so its running sum does not depend on the cost ranking."""
    # A heap of (load, worker) pops the least-loaded worker, ties to the lowest index.
    loads = [(0.0, w) for w in range(workers)]
    assigned: list[list[int]] = [[] for _ in range(workers)]
    cost = np.asarray(costs, dtype=float).tolist()
    for i in np.argsort(-np.asarray(costs, dtype=float), kind="stable").tolist():  # dearest first, ties by position
        load, w = loads[0]
        heapq.heapreplace(loads, (load + cost[i], w))
        assigned[w].append(i)
    return [sorted(a) for a in assigned]


def _pool_label(cfg: BackendConfig, pool: PoolConfig) -> str:
    return f"backend.pools[{pool.name}]" if cfg.pools is not None else "backend"


def pool_sizes(cfg: BackendConfig, resources: dict[str, float]) -> list[int]:
    """Workers per pool that fit the cluster: a pool's num_workers, or for "fill" what
    the cluster's `resources` hold for it (raysim/engine/pools.py). A fill pool that fits
    no worker is refused, naming the setting."""
    pools = cfg.resolved_pools()
    sizes = pool_targets(pools, resources)
    for pool, n in zip(pools, sizes, strict=True):
        if n >= 1:
            continue
        if cfg.pools is None:  # the flat fields' own messages
            if cfg.num_gpus_per_worker > 0 and resources.get("GPU", 0) <= 0:
                raise ValueError(f"backend.num_gpus_per_worker={cfg.num_gpus_per_worker:g} but the Ray cluster "
                                 "has no GPU")
            raise ValueError(f"the Ray cluster ({resources.get('CPU', 0):g} CPUs) fits no worker of "
                             f"backend.num_cpus_per_worker={cfg.num_cpus_per_worker:g}")
        raise ValueError(f"backend.pools[{pool.name}]: num_workers: fill, but the Ray cluster "
                         f"({format_resources(resources)}) has no room for a worker of "
                         f"{format_resources(pool.demand())} after the pools before it; give it a count, "
                         "or start a node with those resources")
    return sizes


def pool_size(cfg: BackendConfig, resources: dict[str, float]) -> int:
    """All pools' workers together (pool_sizes)."""
    return sum(pool_sizes(cfg, resources))


def _alive_nodes() -> list[dict[str, float]]:
    """Each live node's resources a worker can ask for (not memory, nor Ray's node:* markers)."""
    def askable(key: str) -> bool:
        return key not in ("memory", "object_store_memory") and not key.startswith(("node:", "accelerator_type:"))

    return [{k: v for k, v in n["Resources"].items() if askable(k)} for n in ray.nodes() if n.get("Alive")]


def check_pools_placeable(cfg: BackendConfig, nodes: list[dict[str, float]]) -> None:
    """Refuse a pool whose worker no node could ever hold (a GPU or custom resource that no
    node has): Ray would keep such an actor pending for ever."""
    for pool in cfg.resolved_pools():
        demand = pool.demand()
        if not any(workers_fitting(demand, node) >= 1 for node in nodes):
            have = "; ".join(format_resources(n) for n in nodes) or "none"
            raise ValueError(f"{_pool_label(cfg, pool)}: a worker asks for {format_resources(demand)} and no node "
                             f"of the Ray cluster has that (nodes: {have}); change the pool's resources, or start "
                             "a node with them (ray start --num-gpus / --resources)")


def node_tree_reduce(leaves: list[tuple[str, object]], fan_in: int, merge: Callable[[str, list], object]):
    """Merge (node, partial reference) leaves on their own node first, then across nodes, so
    one partial per node crosses the network. Nodes are taken in order of their first leaf and
    each node's leaves in their given order: the order is fixed by the leaves' order and
    placement. `merge(node, group)` submits one merge on `node`; returns the root's reference."""
    by_node: dict[str, list] = {}
    for node, ref in leaves:
        by_node.setdefault(node, []).append(ref)
    roots = [tree_reduce(refs, fan_in, lambda _, group, n=node: merge(n, group)) for node, refs in by_node.items()]
    first = next(iter(by_node), "")
    # Across nodes: on the first node, whose own partial then needs no transfer.
    return tree_reduce(roots, fan_in, lambda _, group: merge(first, group))


@dataclass
class _Pool:
    """A group of identical workers and how it is doing."""

    cfg: PoolConfig
    label: str  # how messages name it
    actor_cls: object
    threads: int
    placement_failed: dict | None = None  # cluster resources when a placement last timed out


@dataclass
class _Worker:
    """A pool member: its actor, an id that is never reused (for logs), and its info() once placed."""

    id: int
    actor: object
    ready: object  # reference of its first info() call: resolves once it is placed and built
    pool: _Pool
    info: dict | None = None
    spawned: float = field(default_factory=time.monotonic)

    @property
    def node(self) -> str:
        return self.info["node"] if self.info else ""


@dataclass
class _WorkerRound:
    """The driver's view of one share of a round's clients (a slot), run by one worker at a time."""

    slot: int
    tasks: list[ClientTask]
    worker: _Worker | None = None  # None while waiting for a worker (its own was lost)
    attempt: int = 0
    next_call: int = 0  # index into chunks
    in_flight: int = 0
    busy_s: float = 0.0
    finished: object = None  # (count ref, partial ref) once `finish` was submitted
    done: bool = False  # `finish` answered with the right count
    node: str = ""  # where its partial lives
    failed_reason: str | None = None
    chunks: list[list[ClientTask]] = field(default_factory=list)
    pool: _Pool | None = None  # the pool of the worker it was given first
    cost: float = 0.0  # predicted cost of its tasks


def _is_placed(actor) -> bool:
    """Whether a node took the actor (its process exists), though it may still be building.
    Ray's actor table has a pid only once the actor was given a worker process."""
    from ray._private import state  # the GCS's actor table; Ray 2.60 has no public call for one actor

    try:
        return bool(state.actors(actor._actor_id.hex()).get("Pid"))
    except Exception:  # noqa: BLE001 - unknown table layout: treat as placed, i.e. wait as before
        return True


def _warn(message: str) -> None:
    print(f"raysim: warning: {message}", file=sys.stderr, flush=True)


class RayBackend(Backend):
    def __init__(self, runner_factory: RunnerFactory, dataset: FederatedDataset, cfg: BackendConfig,
                 population: Population | None = None):
        """`population`: whose device profiles `backend.pools[*].profiles` bind to pools."""
        if not ray.is_initialized():
            raise RuntimeError("RayBackend needs ray.init() first (raysim.engine.ray_session does it for a run)")
        self.cfg = cfg
        sizes = pool_sizes(cfg, ray.cluster_resources())
        check_pools_placeable(cfg, _alive_nodes())
        self.train_sizes = dataset.client_train_sizes()
        self.holdout_sizes = dataset.holdout_counts
        self._factory = runner_factory
        self._dataset_ref = ray.put(dataset)  # once; every worker maps the same buffers
        self.pools = [_Pool(p, _pool_label(cfg, p), ray.remote(ClientWorker).options(
            num_cpus=p.num_cpus_per_worker, num_gpus=p.num_gpus_per_worker, resources=dict(p.resources) or None,
            max_restarts=0, max_task_retries=0), max(1, int(p.num_cpus_per_worker))) for p in cfg.resolved_pools()]
        self._client_pool = self._bind_profiles(population)
        self.throughput = Throughput()
        self._next_id = 0
        self.pool = [self._spawn(pool) for pool, n in zip(self.pools, sizes, strict=True) for _ in range(n)]
        self._round = 0
        self._pool_info: dict[str, float] = {}
        self.replaced = 0  # workers replaced after dying, over the backend's life
        self.started: list[dict] = []  # info() of every worker that was placed, in order
        self.merges: list[dict] = []  # the last run's merges: node and inputs, in submission order
        self._homes: dict = {}  # partial reference -> node it lives on, during a merge
        self._reported_workers = 0
        self._merge_log: list[dict] = []  # merges not yet handed to new_merges
        self._unbound_warned: set[str] = set()

    def _bind_profiles(self, population: Population | None) -> np.ndarray | None:
        """Per client, the index of the pool its device profile is bound to, -1 for none;
        None when no pool binds a profile."""
        bound = {device_profile(name).name: i for i, p in enumerate(self.pools) for name in p.cfg.profiles}
        if not bound:
            return None
        if population is None:
            raise ValueError("backend.pools binds device profiles, but the backend was given no population")
        per_profile = np.array([bound.get(p.name, -1) for p in population.profiles])
        return per_profile[population.profile_ids]

    @property
    def size(self) -> int:
        return len(self.pool)

    @property
    def workers(self) -> list:
        return [w.actor for w in self.pool]

    def _members(self, pool: _Pool) -> list[_Worker]:
        return [w for w in self.pool if w.pool is pool]

    def _spawn(self, pool: _Pool) -> _Worker:
        index, self._next_id = self._next_id, self._next_id + 1
        actor = pool.actor_cls.remote(index, self._factory, self._dataset_ref, pool.threads, pool.cfg.name)
        return _Worker(index, actor, actor.info.remote(), pool)

    def _placed(self, worker: _Worker, timeout_s: float | None) -> bool:
        """Wait for `worker` to start: at most `timeout_s` for a node to take it, then as long as it
        builds (a loaded machine may take longer to start a process than to place it), up to
        build_timeout_s; one that no node took, or that did not build in time, is killed."""
        ready, _ = ray.wait([worker.ready], timeout=timeout_s)
        built_by = time.monotonic() + self.cfg.build_timeout_s
        # Building; a node lost meanwhile ends it with an error, a build that hangs with build_timeout_s.
        while not ready and _is_placed(worker.actor) and time.monotonic() < built_by:
            ready, _ = ray.wait([worker.ready], timeout=1.0)
        try:
            if ready:
                worker.info = ray.get(worker.ready)
                self.started.append(worker.info)
                return True
        except RayError:
            pass
        ray.kill(worker.actor, no_restart=True)
        return False

    def _new_worker(self, pool: _Pool) -> _Worker | None:
        """A started worker of `pool`, or None when no node takes one within the placement timeout. After a timeout, no further worker of the pool is tried until the cluster's resources
        change (a node joins or is declared dead), so a lost node costs one timeout, not one per worker
        or round."""
        if pool.placement_failed is not None and pool.placement_failed == ray.cluster_resources():
            return None
        worker = self._spawn(pool)
        if self._placed(worker, self.cfg.placement_timeout_s):
            return worker
        pool.placement_failed = ray.cluster_resources()
        return None

    def _noun(self, pool: _Pool) -> str:
        return "the worker pool" if self.cfg.pools is None else f"pool {pool.cfg.name}"

    def _grow(self) -> None:
        """Before a round: workers for the resources nodes that joined brought (up to each pool's num_workers)."""
        if all(p.cfg.num_workers != "fill" and len(self._members(p)) >= p.cfg.num_workers for p in self.pools):
            return  # full: no need to ask the cluster
        targets = pool_targets([p.cfg for p in self.pools], ray.cluster_resources())
        free = ray.available_resources()
        for i in fill_order([p.cfg for p in self.pools]):
            pool = self.pools[i]
            before = len(self._members(pool))
            missing = min(targets[i] - before, workers_fitting(pool.cfg.demand(), free))
            for _ in range(max(missing, 0)):
                worker = self._new_worker(pool)
                if worker is None:
                    break
                self.pool.append(worker)
                for k, amount in pool.cfg.demand().items():
                    free[k] = free.get(k, 0.0) - amount
            after = len(self._members(pool))
            if after > before:
                _warn(f"the Ray cluster has room again: {self._noun(pool)} grows from {before} to {after} workers")

    def _replace(self, dead: _Worker) -> _Worker | None:
        """Swap a dead worker for a new one of its pool in its place; None (and the pool shrinks,
        with one log line) when the cluster cannot hold a new one."""
        ray.kill(dead.actor, no_restart=True)
        i = self.pool.index(dead)
        worker = self._new_worker(dead.pool)
        if worker is None:
            del self.pool[i]
            left = len(self._members(dead.pool))
            _warn(f"worker {dead.id} died and no replacement could be placed within "
                  f"backend.placement_timeout_s={self.cfg.placement_timeout_s:g} s (a node lost?): "
                  f"{self._noun(dead.pool)} shrinks to {left} worker{'' if left == 1 else 's'}; its clients rerun "
                  "on the others")
            return None
        self.pool[i] = worker
        self.replaced += 1
        return worker

    def worker_info(self) -> list[dict]:
        self.wait_ready()
        return [w.info for w in self.pool]

    def pool_info(self) -> dict[str, float]:
        return dict(self._pool_info)

    def new_workers(self) -> list[dict]:
        out, self._reported_workers = self.started[self._reported_workers:], len(self.started)
        return out

    def new_merges(self) -> list[dict]:
        out, self._merge_log = self._merge_log, []
        return out

    def wait_ready(self) -> None:
        """Every actor has built its runner. A worker that no node took within placement_timeout_s
        (its resources are held by others) is given up, and so is one placed that has not built within
        build_timeout_s more. A pool left with no worker ends the run with a ConfigError."""
        fresh = waiting = [w for w in self.pool if w.info is None]
        while waiting:
            refs = [w.ready for w in waiting]
            ray.wait(refs, num_returns=len(refs), timeout=0.5)
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for w in waiting:
                if w.ready in done:
                    w.info = ray.get(w.ready)  # a worker that failed to build raises here, as it should
            waiting = [w for w in waiting if w.info is None]
            now = time.monotonic()
            late = [w for w in waiting if now - w.spawned > self.cfg.placement_timeout_s and (
                now - w.spawned > self.cfg.placement_timeout_s + self.cfg.build_timeout_s or not _is_placed(w.actor))]
            unbuilt = {id(w) for w in late if _is_placed(w.actor)}
            for w in late:
                ray.kill(w.actor, no_restart=True)
                self.pool.remove(w)
            waiting = [w for w in waiting if w not in late]
            self._report_unplaced(late, unbuilt)
        self.started += [w.info for w in fresh if w in self.pool]  # in pool order, as workers.jsonl lists them

    def _report_unplaced(self, late: list[_Worker], unbuilt: set[int] = frozenset()) -> None:
        """One line per pool for the workers given up at start: unplaced ones (`late`), or placed
        ones that did not build in time (ids in `unbuilt`); a pool left with none is an error."""
        for pool in {id(w.pool): w.pool for w in late}.values():
            given_up = [w for w in late if w.pool is pool]
            left = len(self._members(pool))
            free, total = ray.available_resources(), ray.cluster_resources()
            n = sum(1 for w in given_up if id(w) not in unbuilt)
            why = []
            if n:
                why.append(f"no node took {n} worker{'' if n == 1 else 's'} of {format_resources(pool.cfg.demand())} "
                           f"within backend.placement_timeout_s={self.cfg.placement_timeout_s:g} s (the cluster has "
                           f"{format_resources({k: free.get(k, 0.0) for k in pool.cfg.demand()})} of "
                           f"{format_resources({k: total.get(k, 0.0) for k in pool.cfg.demand()})} free)")
            if len(given_up) > n:
                why.append(f"{len(given_up) - n} placed worker{'' if len(given_up) - n == 1 else 's'} did not build "
                           f"within backend.build_timeout_s={self.cfg.build_timeout_s:g} s (see the Ray worker logs)")
            text = "; ".join(why)
            if left == 0:
                raise ConfigError(f"{pool.label}: {text}; free those resources, lower the pool's num_workers or "
                                  "resources, or raise backend.placement_timeout_s / build_timeout_s")
            pool.placement_failed = total
            _warn(f"{pool.label}: {text}: running with the {left} placed")

    def close(self) -> None:
        for w in self.pool:
            ray.kill(w.actor, no_restart=True)
        self.pool = []

    def run(self, tasks: Sequence[ClientTask], broadcast: Broadcast) -> Partial:
        start = time.perf_counter()
        self._round += 1
        replaced_before = self.replaced
        self.merges = []
        if not tasks:
            return Partial()
        self._grow()
        box = [ray.put(broadcast)]  # once per round, passed by reference
        for attempt in range(self.cfg.max_retries + 1):
            states = self._run_clients(tasks, box)
            leaves = [(st.node, st.finished[1]) for st in states if st.done]
            try:
                partial = self._reduce(leaves)
                self._merge_log += [{"phase": tasks[0].kind, **m} for m in self.merges]
                break
            except RayError as exc:  # a partial lost with its node, or a merging worker died
                if attempt == self.cfg.max_retries:
                    raise
                _warn(f"the merge lost a partial ({type(exc).__name__}): the round's clients rerun")
                for w in self._dead_workers():
                    self._replace(w)
        for st in states:
            if st.failed_reason is not None:
                for t in st.tasks:
                    partial.add_failure(t.round, t.client, t.kind, st.failed_reason)
        wall = time.perf_counter() - start
        nodes = {m["node"] for m in self.merges}
        self._pool_info = {"workers": float(self.size),
                           "busy_fraction": min(1.0, sum(st.busy_s for st in states) / (max(self.size, 1) * wall)),
                           "workers_replaced": float(self.replaced - replaced_before),
                           "nodes": float(len({w.node for w in self.pool})),
                           "cross_node_partials": float(sum(m["remote_inputs"] for m in self.merges)),
                           "merge_nodes": float(len(nodes))}
        self._observe(tasks[0].kind, states)
        if self.cfg.pools is not None:
            self._pool_info |= self._per_pool_info(tasks[0].kind, states)
        return partial

    def _observe(self, kind: str, states: list[_WorkerRound]) -> None:
        """Each pool's throughput this round, from the shares its workers ran undisturbed."""
        for pool in self.pools:
            clean = [st for st in states if st.pool is pool and st.done and st.attempt == 0]
            self.throughput.observe(kind, pool.cfg.name, sum(st.cost for st in clean), sum(st.busy_s for st in clean))

    def _per_pool_info(self, kind: str, states: list[_WorkerRound]) -> dict[str, float]:
        """Round-log columns per pool: workers, clients, the busiest worker's seconds, its speed estimate."""
        out = {}
        speeds = self.throughput.speeds(kind, [p.cfg.name for p in self.pools])
        for pool, speed in zip(self.pools, speeds, strict=True):
            mine = [st for st in states if st.pool is pool]
            name = pool.cfg.name
            out[f"pool_{name}_workers"] = float(len(self._members(pool)))
            out[f"pool_{name}_clients"] = float(sum(len(st.tasks) for st in mine))
            out[f"pool_{name}_busy_s"] = max((st.busy_s for st in mine), default=0.0)
            out[f"pool_{name}_speed"] = speed
        return out

    def _assignment(self, tasks: Sequence[ClientTask], costs: np.ndarray) -> list[list[int]]:
        """Which worker of the pool runs which task: by measured pool speeds (balance_pools) when there
        are several pools and backend.balance is measured, bound tasks only to their pool."""
        speeds = None
        if len(self.pools) > 1 and self.cfg.balance == "measured":
            by_pool = dict(zip((p.cfg.name for p in self.pools),
                               self.throughput.speeds(tasks[0].kind, [p.cfg.name for p in self.pools]), strict=True))
            speeds = [by_pool[w.pool.cfg.name] for w in self.pool]
        allowed = None
        if self._client_pool is not None:
            members = {i: [j for j, w in enumerate(self.pool) if w.pool is p] for i, p in enumerate(self.pools)}
            allowed = []
            for t in tasks:
                i = int(self._client_pool[t.client])
                if i >= 0 and not members[i]:
                    self._warn_unbound(self.pools[i])
                allowed.append(members[i] if i >= 0 and members[i] else None)
        if speeds is None and allowed is None:
            return balance(costs, self.size)
        return balance_pools(costs, self.size, speeds, allowed)

    def _warn_unbound(self, pool: _Pool) -> None:
        if pool.cfg.name not in self._unbound_warned:
            self._unbound_warned.add(pool.cfg.name)
            _warn(f"{pool.label} has no worker left: the clients of its profiles ({', '.join(pool.cfg.profiles)}) "
                  "run on the other pools")

    def _run_clients(self, tasks: Sequence[ClientTask], box: list) -> list[_WorkerRound]:
        """Every client once into some worker's running sum; a lost worker's share reruns on its
        replacement or, when none can be placed, on the next worker of its pool that finishes its
        own share (of any pool when its pool has none left)."""
        if not self.pool:
            raise RuntimeError("the Ray cluster holds no worker any more")
        costs = predicted_cost(tasks, self.train_sizes, self.holdout_sizes)
        states = [_WorkerRound(slot, [tasks[i] for i in idx], worker, pool=worker.pool, cost=float(costs[idx].sum()))
                  for slot, (worker, idx) in enumerate(zip(self.pool, self._assignment(tasks, costs), strict=True))]
        orphans: list[_WorkerRound] = []  # shares whose worker was lost, waiting for an idle one
        idle: list[_Worker] = []
        pending: dict = {}  # ref -> (state, attempt, "run" | "finish")

        def taker(st: _WorkerRound) -> _Worker | None:
            own = [w for w in idle if w.pool is st.pool]
            if own:
                return own[0]
            return idle[0] if idle and not self._members(st.pool) else None

        def assign():
            for st in list(orphans):
                worker = taker(st)
                if worker is None:
                    continue
                orphans.remove(st)
                idle.remove(worker)
                st.worker = worker
                self._restart_round(st)
                self._feed(st, box, pending)
        for st in states:
            self._restart_round(st)
            self._feed(st, box, pending)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            st, attempt, what = pending.pop(ref)
            if attempt != st.attempt:
                continue  # a reply from a worker already replaced
            try:
                value = ray.get(ref)
            except RayActorError as exc:
                self._worker_lost(st, exc, box, pending, orphans, idle)
                assign()
                continue
            if what == "run":
                st.in_flight -= 1
                st.busy_s += value
                self._feed(st, box, pending)
            elif value != len(st.tasks):  # count from `finish`
                self._worker_lost(st, RuntimeError(f"worker summed {value} of {len(st.tasks)} clients"),
                                  box, pending, orphans, idle)
                assign()
            else:
                st.done, st.node = True, st.worker.node
                idle.append(st.worker)
                assign()
        for st in orphans:  # no worker was left to take them
            st.failed_reason = f"no worker left to rerun them (attempt {st.attempt})"
        return states

    def _reduce(self, leaves: list[tuple[str, object]]) -> Partial:
        """The merge on the pool: per node on that node's workers, then across nodes. A worker
        dying mid-merge is replaced and the merge redone from the leaves, which live in the
        object store, not in the workers."""
        for attempt in range(self.cfg.max_retries + 1):
            self.merges = []
            self._homes = {ref: node for node, ref in leaves}  # where each input partial lives
            try:
                return ray.get(node_tree_reduce(leaves, self.cfg.fan_in, self._merge_on))
            except RayActorError:
                if attempt == self.cfg.max_retries:
                    raise
                for w in self._dead_workers():
                    self._replace(w)
        raise AssertionError("unreachable")

    def _merge_on(self, node: str, group: list):
        """One merge on a pool worker of `node` (merges take turns over that node's workers), or
        on any worker when the node has none left. Which inputs came from elsewhere is recorded:
        a partial is on the node of the worker or merge that made it."""
        local = [w for w in self.pool if w.node == node] or self.pool
        n = sum(1 for m in self.merges if m["node"] == local[0].node)
        worker = local[n % len(local)]
        ref = worker.actor.merge.remote(*group)
        homes = [self._homes.get(r, "") for r in group]
        self._homes[ref] = worker.node
        self.merges.append({"node": worker.node, "worker": worker.id, "inputs": len(group),
                            "remote_inputs": sum(1 for h in homes if h != worker.node)})
        return ref

    def _dead_workers(self) -> list[_Worker]:
        pings = {w.actor.info.remote(): w for w in self.pool}
        dead = []
        for ref, w in pings.items():
            try:
                ray.get(ref, timeout=self.cfg.placement_timeout_s)
            except (RayError, TimeoutError):
                dead.append(w)
        return dead

    def _restart_round(self, st: _WorkerRound) -> None:
        size = self.cfg.clients_per_call
        st.chunks = [st.tasks[i:i + size] for i in range(0, len(st.tasks), size)]
        st.next_call, st.in_flight, st.finished = 0, 0, None

    def _feed(self, st: _WorkerRound, box: list, pending: dict) -> None:
        """Keep PIPELINE_DEPTH calls queued on the share's worker; after the last chunk, ask for its partial."""
        if st.failed_reason is not None or st.finished is not None or st.worker is None:
            return
        key = (self._round, st.slot, st.attempt)
        actor = st.worker.actor
        while st.in_flight < PIPELINE_DEPTH and st.next_call < len(st.chunks):
            ref = actor.run.remote(key, box, st.chunks[st.next_call])
            pending[ref] = (st, st.attempt, "run")
            st.next_call += 1
            st.in_flight += 1
        if st.next_call == len(st.chunks) and st.in_flight == 0:
            count_ref, partial_ref = actor.finish.options(num_returns=2).remote(key)
            st.finished = (count_ref, partial_ref)
            pending[count_ref] = (st, st.attempt, "finish")

    def _worker_lost(self, st: _WorkerRound, exc: Exception, box: list, pending: dict,
                     orphans: list, idle: list) -> None:
        dead = st.worker
        st.attempt += 1
        st.worker = self._replace(dead) if dead in self.pool else None
        if st.attempt > self.cfg.max_retries:
            st.failed_reason = f"worker {dead.id} died {st.attempt} times this round (last: {type(exc).__name__})"
            if st.worker is not None:
                idle.append(st.worker)
            return
        if st.worker is None:
            orphans.append(st)
            return
        self._restart_round(st)
        self._feed(st, box, pending)


def _check_reachable(address: str, source: str) -> None:
    """A GCS address (host:port) nobody listens on makes ray.init retry for many minutes:
    fail at once, naming the setting, instead."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return  # "auto", "ray://...": Ray's own checks apply
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"{source}={address}: no Ray cluster answers there ({exc})") from None


@contextmanager
def _ray_local_only_mode():
    """Ray's local-only mode for the duration of a local ray.init.

    A Ray server binds to loopback only when its node's IP is loopback (GCS, raylet,
    workers and the driver: listen_to_localhost_only; the dashboard agent and the
    runtime-env agent bind the node IP). On Linux, Ray replaces a loopback node IP (even
    `_node_ip_address="127.0.0.1"`) with the machine's outward address, so everything
    but the dashboard would listen beyond loopback. With ENABLE_RAY_CLUSTER off (its
    default on macOS and Windows) Ray keeps the node IP on loopback instead. Read when
    the node starts, so it is switched back at once."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _start_local_ray_on_loopback(dashboard: bool) -> None:
    """A local Ray instance with every port on loopback (docs/network.md); refuses to run
    on one that is not (a Ray upgrade that changes how the node IP is chosen)."""
    with _ray_local_only_mode():
        ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1", logging_level="WARNING")
    try:
        require_loopback_node_ip(ray.util.get_node_ip_address())
    except RuntimeError:
        ray.shutdown()
        raise


def require_loopback_node_ip(node_ip: str) -> None:
    """Raise unless `node_ip` is a loopback address."""
    if not ipaddress.ip_address(node_ip).is_loopback:
        raise RuntimeError(f"the local Ray instance took node IP {node_ip}, not loopback: its ports would be "
                           f"open on the network (Ray {ray.__version__}; see docs/network.md)")


@contextmanager
def ray_session(cfg: BackendConfig, dashboard: bool = False):
    """Join the cluster the run should use for as long as the run lasts.

    An already initialised Ray (a test session, a notebook) is used as it is and left
    running. Otherwise `backend.address`, else $RAY_ADDRESS (set by `ray job submit`),
    names a cluster to join; with neither, a local instance is started and stopped,
    every port of it on loopback (with its dashboard, also on loopback, when `dashboard`),
    with Ray's token authentication (raysim/engine/ray_auth.py)."""
    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        source = "backend.address" if cfg.address else "$RAY_ADDRESS"
        _check_reachable(address, source)
        try:
            ray.init(address=address, logging_level="WARNING")
        except (ConnectionError, TimeoutError, RuntimeError) as exc:  # what ray.init raises for a bad address
            raise ConfigError(f"{source}={address}: cannot join a Ray cluster there "
                              f"({type(exc).__name__}: {exc})") from None
    else:
        with own_auth_message():
            _start_local_ray_on_loopback(dashboard)
    try:
        yield
    finally:
        ray.shutdown()
