"""failures.jsonl: every failed client with its reason, one line each.

Rounds are numbered as in rounds.parquet (1 is the first training round, 0 an
algorithm's set-up phase). A resumed run first cuts the file back to the checkpoint
it resumes from, so the rounds it runs again are not listed twice."""
from __future__ import annotations

import json
from pathlib import Path

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial
from raysim.results.run_dir import write_atomic

FAILURES_FILE = "failures.jsonl"


def read_failures(run_dir: Path) -> list[dict]:
    path = run_dir / FAILURES_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class FailureLog(Callback):
    def __init__(self, run_dir: Path, resume_round: int | None = None):
        """`resume_round`: the checkpoint's round when resuming; later lines are dropped."""
        self.path = run_dir / FAILURES_FILE
        if resume_round is not None and self.path.exists():
            kept = [f for f in read_failures(run_dir) if f["round"] <= resume_round]
            write_atomic(self.path, "".join(json.dumps(f) + "\n" for f in kept).encode())

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        if partial.failures:
            with self.path.open("a") as f:
                for fail in partial.failures:
                    line = {"round": record.round, "phase": record.phase, "client": fail.client, "kind": fail.kind,
                            "reason": fail.reason}
                    f.write(json.dumps(line) + "\n")
