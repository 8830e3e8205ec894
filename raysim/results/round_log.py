"""rounds.parquet: one row per round, rewritten atomically after every round."""
from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial
from raysim.results.run_dir import write_atomic

ROUNDS_FILE = "rounds.parquet"


def read_rounds(run_dir: Path) -> list[dict]:
    path = run_dir / ROUNDS_FILE
    return pq.read_table(path).to_pylist() if path.exists() else []


class RoundLog(Callback):
    def __init__(self, run_dir: Path, rows: list[dict] | None = None):
        self.path = run_dir / ROUNDS_FILE
        self.rows: list[dict] = list(rows or [])

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        self.rows.append(record.row())
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in self.rows])
        buf = io.BytesIO()
        pq.write_table(table, buf)
        write_atomic(self.path, buf.getvalue())
