"""Mergeable statistics: everything a client contributes is a sum.

Workers pre-sum their own clients and a reduction tree merges partials with
`+` without knowing what they hold. Tensors accumulate in float64 so that
different groupings of the same sum agree far below float32 resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from raysim.engine.counters import ClientCounters, EvalCounters, add_metrics

PHASES = ("train", "explore", "evaluate")
Tensors = dict[str, torch.Tensor]


@dataclass
class WeightedSum:
    """sum_k w_k * x_k (per named tensor) together with sum_k w_k."""

    total: Tensors
    weight: float

    @classmethod
    def of(cls, tensors: Tensors, weight: float) -> "WeightedSum":
        return cls({k: v.detach().to(torch.float64, copy=True).mul_(weight) for k, v in tensors.items()},
                   float(weight))

    def add_(self, other: "WeightedSum") -> "WeightedSum":
        """In place: for a sum this partial owns (one allocation per round, not per client)."""
        self._check_same(other)
        for k, v in self.total.items():
            v.add_(other.total[k])
        self.weight += other.weight
        return self

    def _check_same(self, other: "WeightedSum") -> None:
        if self.total.keys() != other.total.keys():
            raise ValueError(f"cannot merge sums over different tensors: {sorted(self.total)} vs {sorted(other.total)}")

    def __add__(self, other: "WeightedSum") -> "WeightedSum":
        self._check_same(other)
        return WeightedSum({k: v + other.total[k] for k, v in self.total.items()}, self.weight + other.weight)

    def mean(self, dtype: torch.dtype = torch.float32) -> Tensors:
        if self.weight <= 0:
            raise ValueError("mean of an empty weighted sum")
        return {k: (v / self.weight).to(dtype) for k, v in self.total.items()}

    def is_finite(self) -> bool:
        return math.isfinite(self.weight) and all(bool(torch.isfinite(v).all()) for v in self.total.values())


@dataclass(frozen=True)
class ClientFailure:
    round: int
    client: int
    kind: str
    reason: str


@dataclass
class Partial:
    """What a group of clients adds up to: named weighted sums, typed counters per task
    kind, the algorithm's own summed metrics, failures."""

    stats: dict[str, WeightedSum] = field(default_factory=dict)
    train: ClientCounters = field(default_factory=ClientCounters)
    explore: ClientCounters = field(default_factory=ClientCounters)
    evaluate: EvalCounters = field(default_factory=EvalCounters)
    metrics: dict[str, float] = field(default_factory=dict)  # ClientUpdate.metrics, summed by name
    failures: list[ClientFailure] = field(default_factory=list)
    # Per-client states returned this round (client id -> tensors), for algorithms that keep
    # one per client; each client appears in one partial only, so merging is a union.
    client_states: dict[int, Tensors] = field(default_factory=dict)

    def add_stats(self, stats: dict[str, WeightedSum]) -> None:
        """Sum one client's `stats` into this partial in place, taking them over: the first
        client's sums become the running sums, later ones are added into them."""
        for k, v in stats.items():
            if k in self.stats:
                self.stats[k].add_(v)
            else:
                self.stats[k] = v

    def counters(self, kind: str) -> ClientCounters | EvalCounters:
        """The counters of task kind `kind` ("train", "explore" or "evaluate")."""
        if kind not in PHASES:
            raise ValueError(f"unknown task kind {kind!r}; expected one of {PHASES}")
        return getattr(self, kind)

    def add_failure(self, round: int, client: int, kind: str, reason: str) -> None:
        """A client that failed: listed with its reason and counted in its kind's `failed`."""
        self.failures.append(ClientFailure(round, client, kind, reason))
        self.counters(kind).failed += 1

    def __add__(self, other: "Partial") -> "Partial":
        """A new Partial; neither operand changes (merges share their inputs' sums)."""
        stats = dict(self.stats)
        for k, v in other.stats.items():
            stats[k] = stats[k] + v if k in stats else v
        metrics = dict(self.metrics)
        add_metrics(metrics, other.metrics)
        return Partial(stats, self.train + other.train, self.explore + other.explore, self.evaluate + other.evaluate,
                       metrics, self.failures + other.failures, self.client_states | other.client_states)


def merge_all(partials: list[Partial]) -> Partial:
    """Left fold in the given order: the order is part of bit-exact reproducibility."""
    out = Partial()
    for p in partials:
        out = out + p
    return out
