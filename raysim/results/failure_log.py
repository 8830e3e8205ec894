"""failures.jsonl: every failed client with its reason, one line each.

Rounds are numbered as in rounds.parquet (1 is the first training round, 0 an
algorithm's set-up phase). A resumed run first cuts the file back to the checkpoint
it resumes from, so the rounds it runs again are not listed twice."""
from __future__ import annotations

from pathlib import Path

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial
from raysim.results.run_dir import append_jsonl, cut_back_jsonl, read_jsonl

FAILURES_FILE = "failures.jsonl"


def read_failures(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / FAILURES_FILE)


class FailureLog(Callback):
    def __init__(self, run_dir: Path, resume_round: int | None = None):
        """`resume_round`: the checkpoint's round when resuming; later lines are dropped."""
        self.path = run_dir / FAILURES_FILE
        if resume_round is not None:
            cut_back_jsonl(self.path, "round", resume_round)

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        append_jsonl(self.path, [{"round": record.round, "phase": record.phase, "client": f.client, "kind": f.kind,
                                  "reason": f.reason} for f in partial.failures])
