"""workers.jsonl and merges.jsonl: appended each round, cut back on resume."""
from raysim.engine.backend import Backend
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial
from raysim.experiment import execute, new_run
from raysim.results.cluster_log import MERGES_FILE, WORKERS_FILE, ClusterLog
from raysim.results.run_dir import read_jsonl


def _info(index: int, node: str) -> dict:
    return {"index": index, "pid": 100 + index, "node": node, "node_ip": "10.0.0.1", "gpu_ids": [],
            "resources": {"CPU": 1.0}, "device": "cpu"}


class FakeBackend(Backend):
    """Hands out the workers and merges it is given, once each, as RayBackend does."""

    def __init__(self):
        self.workers, self.merges = [], []

    def run(self, tasks, broadcast):
        return Partial()

    def new_workers(self):
        out, self.workers = self.workers, []
        return out

    def new_merges(self):
        out, self.merges = self.merges, []
        return out


def _end_round(log: ClusterLog, round_no: int) -> None:
    log.on_round_end(RoundRecord.of(round_no, "train", 0, Partial(), None), None, Partial())


def test_workers_get_the_round_they_first_served_and_resume_cuts_both_files_back(tmp_path):
    backend = FakeBackend()
    log = ClusterLog(tmp_path, backend)
    backend.workers = [_info(0, "a"), _info(1, "b")]
    backend.merges = [{"phase": "train", "node": "a", "worker": 0, "inputs": 2, "remote_inputs": 1}]
    _end_round(log, 1)
    _end_round(log, 2)  # nothing new: nothing written
    backend.workers = [_info(2, "c")]  # a replacement started during round 3
    backend.merges = [{"phase": "train", "node": "a", "worker": 0, "inputs": 2, "remote_inputs": 1}]
    _end_round(log, 3)
    workers = read_jsonl(tmp_path / WORKERS_FILE)
    assert [(w["worker"], w["node"], w["start_round"], w["cpus"], w["gpus"], w["pid"]) for w in workers] == [
        (0, "a", 1, 1.0, 0.0, 100), (1, "b", 1, 1.0, 0.0, 101), (2, "c", 3, 1.0, 0.0, 102)]
    assert [m["round"] for m in read_jsonl(tmp_path / MERGES_FILE)] == [1, 3]

    ClusterLog(tmp_path, FakeBackend(), resume_round=2)  # rounds after the checkpoint run again
    assert [w["worker"] for w in read_jsonl(tmp_path / WORKERS_FILE)] == [0, 1]
    assert [m["round"] for m in read_jsonl(tmp_path / MERGES_FILE)] == [1]


def test_an_in_process_run_writes_neither_file(small_config):
    cfg = small_config(rounds=1)
    run_dir = new_run(cfg)
    execute(cfg, run_dir, quiet=True)
    assert not (run_dir / WORKERS_FILE).exists() and not (run_dir / MERGES_FILE).exists()
