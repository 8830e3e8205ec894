"""Whether a round went wrong numerically: most of its clients failed (NaN updates are
failures), or the training loss of the clients that finished is not finite."""
from __future__ import annotations

import math

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial


def divergence(row: dict) -> str | None:
    """Why a rounds.parquet row looks diverged, or None."""
    done, failed = row["clients_done"], row["clients_failed"]
    if failed > done:
        return f"{failed} of {done + failed} clients failed (see failures.jsonl)"
    loss = row["train_loss"]
    if done and (loss is None or not math.isfinite(loss)):
        return f"training loss is {loss}"
    return None


def divergence_warnings(rows: list[dict]) -> list[str]:
    return [f"round {r['round']}: {why}" for r in rows if (why := divergence(r))]


class DivergenceStop(Callback):
    """Ends the run after the first diverged round (`stop_on_divergence: true`)."""

    def __init__(self):
        self.stopped_at: int | None = None

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> bool:
        if self.stopped_at is None and divergence(record.row()):
            self.stopped_at = record.round
        return self.stopped_at is not None
