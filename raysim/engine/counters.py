"""Typed per-phase counters: what clients spent and returned, summed with `+`.

A misspelt field is an AttributeError, not a silent 0 as a string key was. Each task
kind has its own counters: training (and AutoFLIP's exploration, which trains too)
count work, evaluation counts predictions.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class ClientCounters:
    """One training phase ("train" or "explore") of a round: sums, except the slowest
    client's simulated time, which merges by max."""

    done: int = 0  # clients whose update reached the server
    dropped: int = 0  # clients that missed the round deadline (their cost still counts)
    failed: int = 0  # clients that raised
    samples: int = 0  # training samples of the done clients (the loss weight)
    loss_sum: float = 0.0  # train loss x samples of the done clients
    examples: int = 0  # examples run forward+backward (epochs x samples), every client that trained
    flops_executed: float = 0.0
    flops_effective: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    train_wall_s: float = 0.0  # real seconds the workers spent in client_update
    vectorized: int = 0  # clients that trained in a vectorised group (backend.vectorize)
    sim_time_s: float = 0.0  # slowest done client's simulated seconds: merges by max

    def __add__(self, other: "ClientCounters") -> "ClientCounters":
        out = _summed(self, other)
        out.sim_time_s = max(self.sim_time_s, other.sim_time_s)
        return out


@dataclass
class EvalCounters:
    """Clients' held-out evaluation."""

    clients: int = 0
    examples: int = 0
    correct: int = 0
    loss_sum: float = 0.0
    failed: int = 0

    def __add__(self, other: "EvalCounters") -> "EvalCounters":
        return _summed(self, other)


def _summed(a, b):
    if type(a) is not type(b):
        raise TypeError(f"cannot add {type(a).__name__} and {type(b).__name__}")
    return type(a)(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(a)})


def add_metrics(into: dict[str, float], metrics: dict[str, float]) -> None:
    """An algorithm's own per-client values (ClientUpdate.metrics), summed by name in place."""
    for k, v in metrics.items():
        into[k] = into.get(k, 0.0) + float(v)
