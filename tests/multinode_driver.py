"""A raysim run as a separate driver process on a test's multi-node cluster (the test
process keeps its own Ray), with one hook for the node-loss test: after the first round
the shrunken pool ran, it writes PAUSE_DIR/paused and waits (bounded) for PAUSE_DIR/resume,
so the test can start a node that joins before the next round.

    python multinode_driver.py CONFIG.yaml RUN_DIR [PAUSE_DIR]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from raysim.config import load_config
from raysim.engine.loop import Callback
from raysim.experiment import execute, new_run


class PauseWhenShrunk(Callback):
    def __init__(self, folder: Path, full: int):
        self.folder, self.full, self.paused = folder, full, False

    def on_round_end(self, record, state, partial):
        if self.paused or record.pool.get("workers", self.full) >= self.full:
            return
        self.paused = True
        (self.folder / "paused").touch()
        end = time.monotonic() + 120
        while not (self.folder / "resume").exists():
            if time.monotonic() > end:
                raise TimeoutError("the test never wrote resume")
            time.sleep(0.05)


def main() -> None:
    cfg = load_config(Path(sys.argv[1]))
    run_dir = new_run(cfg, Path(sys.argv[2]))
    callbacks = [PauseWhenShrunk(Path(sys.argv[3]), cfg.backend.num_workers)] if len(sys.argv) > 3 else []
    execute(cfg, run_dir, callbacks=callbacks, quiet=True)
    print(run_dir)


if __name__ == "__main__":
    main()
