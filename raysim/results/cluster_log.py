"""Where a Ray run ran: workers.jsonl (one line per worker the run started: its pool, node,
node IP, declared CPUs/GPUs and custom resources, device, pid and the round it first served) and merges.jsonl
(each merge of client partials: its node, how many inputs, how many came from other nodes).

Written at each round's end, numbered like rounds.parquet; a resumed run first cuts both
files back to the checkpoint's round, as failures.jsonl is. The in-process backend has no
workers and writes neither."""
from __future__ import annotations

from pathlib import Path

from raysim.engine.api import ServerState
from raysim.engine.backend import Backend
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial
from raysim.results.run_dir import append_jsonl, cut_back_jsonl

WORKERS_FILE = "workers.jsonl"
MERGES_FILE = "merges.jsonl"


def worker_line(info: dict, start_round: int) -> dict:
    resources = info.get("resources", {})
    custom = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
    return {"worker": info["index"], "pool": info.get("pool", "default"), "node": info["node"],
            "node_ip": info["node_ip"], "cpus": resources.get("CPU", 0.0), "gpus": resources.get("GPU", 0.0),
            "resources": custom, "gpu_ids": info["gpu_ids"], "device": info["device"], "pid": info["pid"],
            "start_round": start_round}


class ClusterLog(Callback):
    def __init__(self, run_dir: Path, backend: Backend, resume_round: int | None = None):
        """`resume_round`: the checkpoint's round when resuming; later lines are dropped."""
        self.backend = backend
        self.workers_path, self.merges_path = run_dir / WORKERS_FILE, run_dir / MERGES_FILE
        if resume_round is not None:
            cut_back_jsonl(self.workers_path, "start_round", resume_round)
            cut_back_jsonl(self.merges_path, "round", resume_round)

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        # A worker first seen now started during this round (or, for the first pool, before it).
        append_jsonl(self.workers_path, [worker_line(info, record.round) for info in self.backend.new_workers()])
        append_jsonl(self.merges_path, [{"round": record.round, **m} for m in self.backend.new_merges()])
