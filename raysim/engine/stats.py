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


# Floating dtypes whose values times an integer weight below 2**29 are exact in float64
# (at most 24 + 29 significant bits): scaling them inside the float64 add rounds as
# scaling first would, so the fused one-pass add is bit-identical to the two-pass one.
_EXACT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_EXACT_WEIGHT = 2**29


class WeightedSum:
    """sum_k w_k * x_k (per named tensor) together with sum_k w_k.

    A sum made by `lazy` holds its client's tensors unscaled until it is read or added
    into another sum; a worker adds each client's contribution into its running float64
    sum in one pass (no float64 copy per client)."""

    __slots__ = ("_total", "_unscaled", "weight")

    def __init__(self, total: Tensors, weight: float):
        self._total: Tensors | None = total
        self._unscaled: Tensors | None = None
        self.weight = float(weight)

    @classmethod
    def of(cls, tensors: Tensors, weight: float) -> "WeightedSum":
        return cls({k: v.detach().to(torch.float64, copy=True).mul_(weight) for k, v in tensors.items()},
                   float(weight))

    @classmethod
    def lazy(cls, tensors: Tensors, weight: float) -> "WeightedSum":
        """Like `of`, but takes over `tensors` (the caller must not change them afterwards):
        they are scaled into float64 only when the sum is read or added into another."""
        s = cls.__new__(cls)
        s._total, s._unscaled, s.weight = None, {k: v.detach() for k, v in tensors.items()}, float(weight)
        return s

    @property
    def total(self) -> Tensors:
        if self._total is None:
            self._total = {k: v.to(torch.float64, copy=True).mul_(self.weight) for k, v in self._unscaled.items()}
            self._unscaled = None
        return self._total

    @total.setter
    def total(self, tensors: Tensors) -> None:
        self._total, self._unscaled = tensors, None

    def _held(self) -> Tensors:
        """The tensors as held: scaled once read, else the client's own."""
        return self._total if self._total is not None else self._unscaled

    def _names(self):
        return self._held().keys()

    def add_(self, other: "WeightedSum") -> "WeightedSum":
        """In place: for a sum this partial owns (one allocation per round, not per client)."""
        self._check_same(other)
        raw = other._unscaled
        if raw is not None and _exact_scale(raw, other.weight):
            for k, v in self.total.items():
                v.add_(raw[k], alpha=other.weight)
        else:
            for k, v in self.total.items():
                v.add_(other.total[k])
        self.weight += other.weight
        return self

    def _check_same(self, other: "WeightedSum") -> None:
        if self._names() != other._names():
            raise ValueError(f"cannot merge sums over different tensors: {sorted(self._names())} vs "
                             f"{sorted(other._names())}")

    def __add__(self, other: "WeightedSum") -> "WeightedSum":
        self._check_same(other)
        return WeightedSum({k: v + other.total[k] for k, v in self.total.items()}, self.weight + other.weight)

    def mean(self, dtype: torch.dtype = torch.float32) -> Tensors:
        if self.weight <= 0:
            raise ValueError("mean of an empty weighted sum")
        return {k: (v / self.weight).to(dtype) for k, v in self.total.items()}

    def to(self, device: torch.device | str) -> "WeightedSum":
        """The same sum with its tensors on `device` (itself when they are already there)."""
        if all(v.device == torch.device(device) for v in self._held().values()):
            return self
        moved = {k: v.to(device) for k, v in self._held().items()}
        return WeightedSum(moved, self.weight) if self._total is not None else WeightedSum.lazy(moved, self.weight)

    def is_finite(self) -> bool:
        return math.isfinite(self.weight) and all(_all_finite(v) for v in self._held().values())

    def __getstate__(self):  # __slots__ classes pickle through this pair
        return self._total, self._unscaled, self.weight

    def __setstate__(self, state) -> None:
        self._total, self._unscaled, self.weight = state

    def __repr__(self) -> str:
        return f"WeightedSum(weight={self.weight!r}, tensors={sorted(self._names())})"


def _exact_scale(tensors: Tensors, weight: float) -> bool:
    return weight.is_integer() and abs(weight) < _EXACT_WEIGHT and all(v.dtype in _EXACT_DTYPES
                                                                        for v in tensors.values())


def _all_finite(v: torch.Tensor) -> bool:
    """One read-only pass: a sum is finite exactly when every entry is, unless finite entries
    overflow it (a diverged client's huge values), which the exact check then settles. The sum
    runs in the tensor's own dtype, several times faster than an upcast or a bool copy."""
    if not v.is_floating_point():
        return bool(torch.isfinite(v).all())  # integers are always finite; complex has no ordered sum
    if math.isfinite(float(v.sum())):
        return True
    return bool(torch.isfinite(v).all())


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
