"""Worker pools without Ray: how many workers each pool gets, how fast each pool runs
clients, and which worker runs which client.

- Sizing: pools with a count get it; "fill" pools share what is left of the cluster's
  resources, those asking for GPUs or custom resources first (they are the scarce
  ones, and a CPU-only pool would otherwise take the CPUs of their nodes), then in the
  order listed.
- Throughput: per pool and task kind, predicted cost units per busy second, observed
  in each round and smoothed over rounds.
- Balance: longest first onto the worker that would finish it first, given its load and
  its pool's speed; clients bound to a pool (device-profile affinity) go first and only
  to that pool's workers.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from raysim.config import PoolConfig

# Weight of the previous estimate against the latest round's: about two rounds of memory,
# quick to follow a pool that slows down, steady against one noisy round.
SMOOTHING = 0.5


def workers_fitting(demand: dict[str, float], resources: dict[str, float]) -> int:
    """Workers asking `demand` each that `resources` (total or available) hold; 0 when none."""
    fit = min(math.floor(round(resources.get(k, 0.0) / amount, 6)) for k, amount in demand.items())
    return max(fit, 0)


def _take(resources: dict[str, float], demand: dict[str, float], workers: int) -> None:
    for k, amount in demand.items():
        resources[k] = max(resources.get(k, 0.0) - amount * workers, 0.0)


def _scarce(pool: PoolConfig) -> bool:
    return pool.num_gpus_per_worker > 0 or bool(pool.resources)


def fill_order(pools: Sequence[PoolConfig]) -> list[int]:
    """Indices of `pools` in the order they claim resources: counted pools, then fill pools
    asking for GPUs or custom resources, then the other fill pools (each group as listed)."""
    return sorted(range(len(pools)), key=lambda i: (pools[i].num_workers == "fill", not _scarce(pools[i]), i))


def pool_targets(pools: Sequence[PoolConfig], resources: dict[str, float]) -> list[int]:
    """Workers each pool should have on a cluster with `resources` in total."""
    left = dict(resources)
    out = [0] * len(pools)
    for i in fill_order(pools):
        pool = pools[i]
        n = pool.num_workers if pool.num_workers != "fill" else workers_fitting(pool.demand(), left)
        out[i] = n
        _take(left, pool.demand(), n)
    return out


def format_resources(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


class Throughput:
    """Each pool's speed per task kind: predicted cost units per busy second of one worker.
    Kinds are kept apart (evaluation is forward passes only); a kind not measured yet
    borrows the training speeds, and with nothing measured every pool counts as equal."""

    def __init__(self) -> None:
        self.rates: dict[str, dict[str, float]] = {}  # kind -> pool -> cost units per second

    def observe(self, kind: str, pool: str, cost: float, busy_s: float) -> None:
        if cost <= 0 or busy_s <= 0:
            return
        rate = cost / busy_s
        rates = self.rates.setdefault(kind, {})
        rates[pool] = rate if pool not in rates else SMOOTHING * rates[pool] + (1 - SMOOTHING) * rate

    def speeds(self, kind: str, pools: Sequence[str]) -> list[float]:
        """The speed of each of `pools`; one not measured gets the mean of those that were."""
        rates = self.rates.get(kind) or self.rates.get("train") or {}
        known = [rates[p] for p in pools if p in rates]
        if not known:
            return [1.0] * len(pools)
        fallback = sum(known) / len(known)
        return [rates.get(p, fallback) for p in pools]


def balance_pools(costs: np.ndarray, workers: int, speeds: Sequence[float] | None = None,
            allowed: Sequence[Sequence[int] | None] | None = None) -> list[list[int]]:
    """Longest-processing-time-first: each task (dearest first, ties by position) onto the
    worker that would finish it soonest, (load + cost) / speed (ties to the lowest index).
    Without `speeds`, onto the least-loaded worker (as ray_backend.balance, which the single
    pool uses). `allowed[i]`, when given and not None,
    lists the workers task i may go to; those tasks are placed before the free ones, so a
    free task never takes the room a bound one needed. Each worker's tasks stay in their
    original order so its running sum does not depend on the cost ranking."""
    loads = np.zeros(workers)
    speed = None if speeds is None else np.asarray(speeds, dtype=float)
    every = np.arange(workers)
    assigned: list[list[int]] = [[] for _ in range(workers)]

    def bound(i: int) -> bool:
        return allowed is not None and allowed[i] is not None

    for i in sorted(range(len(costs)), key=lambda i: (not bound(i), -costs[i], i)):
        cand = np.asarray(allowed[i]) if bound(i) else every
        finish = loads[cand] if speed is None else (loads[cand] + costs[i]) / speed[cand]
        w = int(cand[int(np.argmin(finish))])
        loads[w] += costs[i]
        assigned[w].append(i)
    return [sorted(a) for a in assigned]
