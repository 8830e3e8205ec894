"""failures.jsonl: every failed client with its reason, one line each."""
from __future__ import annotations

import json
from pathlib import Path

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial

FAILURES_FILE = "failures.jsonl"


class FailureLog(Callback):
    def __init__(self, run_dir: Path):
        self.path = run_dir / FAILURES_FILE

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        if partial.failures:
            with self.path.open("a") as f:
                for fail in partial.failures:
                    f.write(json.dumps(fail.__dict__) + "\n")
