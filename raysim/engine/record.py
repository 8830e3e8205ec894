"""The typed round record: what callbacks see after each round, and the row
rounds.parquet gets (`RoundRecord.row`)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from raysim.devices import round_time_s
from raysim.engine.stats import Partial

EVAL_COLUMNS = ("accuracy", "loss", "client_accuracy", "client_loss")


@dataclass(frozen=True)
class Evaluation:
    """The global model on the global test set and, where enabled, on clients' held-out data."""

    accuracy: float
    loss: float
    client_accuracy: float | None = None
    client_loss: float | None = None


@dataclass
class RoundRecord:
    round: int  # 1-based; 0 is an algorithm's set-up phase (AutoFLIP's exploration)
    phase: str  # the task kind: "train", or "explore" for the set-up phase
    clients_sampled: int
    clients_done: int
    clients_dropped: int
    clients_failed: int
    train_loss: float  # sample-weighted mean over the done clients; NaN when none
    flops_executed: float
    flops_effective: float
    bytes_down: int
    bytes_up: int
    client_train_wall_s: float
    sim_time_s: float
    clients_vectorized: int = 0  # of the clients that trained, those in a vectorised group
    wall_time_s: float = 0.0
    pool: dict[str, float] = field(default_factory=dict)  # Ray worker pool: size, busy fraction
    metrics: dict[str, float] = field(default_factory=dict)  # what the algorithm's aggregate returned
    evaluation: Evaluation | None = None  # None in rounds without an evaluation

    @classmethod
    def of(cls, round_no: int, phase: str, sampled: int, partial: Partial, deadline_s: float | None) -> "RoundRecord":
        c = partial.counters(phase)
        return cls(
            round=round_no, phase=phase, clients_sampled=sampled, clients_done=c.done, clients_dropped=c.dropped,
            clients_failed=c.failed, train_loss=c.loss_sum / c.samples if c.samples else math.nan,
            flops_executed=c.flops_executed, flops_effective=c.flops_effective, bytes_down=c.bytes_down,
            bytes_up=c.bytes_up, client_train_wall_s=c.train_wall_s,
            sim_time_s=round_time_s(c.sim_time_s, c.dropped, deadline_s), clients_vectorized=c.vectorized,
        )

    @property
    def accuracy(self) -> float | None:
        return None if self.evaluation is None else self.evaluation.accuracy

    def row(self) -> dict:
        """Flat: the counters, then pool, metrics and evaluation columns (null when not evaluated)."""
        base = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("pool", "metrics", "evaluation")}
        evaluation = asdict(self.evaluation) if self.evaluation else dict.fromkeys(EVAL_COLUMNS)
        row = dict(base)
        for group in (self.pool, self.metrics, evaluation):
            clash = row.keys() & group.keys()
            if clash:
                raise ValueError(f"round {self.round}: metric names {sorted(clash)} clash with round-log columns; "
                                 "rename them in the algorithm's aggregate")
            row |= group
        return row
