"""Checkpoints as safetensors (tensors) plus JSON (everything else): no pickle anywhere."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial
from raysim.results.run_dir import write_atomic

CHECKPOINT_DIR = "checkpoints"


def save_checkpoint(run_dir: Path, state: ServerState, extra: dict | None = None) -> Path:
    folder = run_dir / CHECKPOINT_DIR
    folder.mkdir(exist_ok=True)
    stem = folder / f"round-{state.round:05d}"
    tensors = {f"weights/{k}": v.contiguous() for k, v in state.weights.items()}
    tensors |= {f"buffers/{k}": v.contiguous() for k, v in state.buffers.items()}
    write_atomic(stem.with_suffix(".safetensors"), st_save(tensors))
    # The JSON is written last: a checkpoint exists only once its metadata does.
    meta = {"round": state.round, "meta": state.meta} | (extra or {})
    write_atomic(stem.with_suffix(".json"), json.dumps(meta, indent=2).encode())
    return stem


def latest_checkpoint(run_dir: Path) -> Path | None:
    metas = sorted((run_dir / CHECKPOINT_DIR).glob("round-*.json"))
    return metas[-1].with_suffix("") if metas else None


def load_checkpoint(stem: Path) -> ServerState:
    meta = json.loads(stem.with_suffix(".json").read_text())
    tensors = st_load(stem.with_suffix(".safetensors").read_bytes())
    weights = {k.removeprefix("weights/"): v for k, v in tensors.items() if k.startswith("weights/")}
    buffers = {k.removeprefix("buffers/"): v for k, v in tensors.items() if k.startswith("buffers/")}
    return ServerState(meta["round"], weights, buffers, meta["meta"])


class Checkpointer(Callback):
    def __init__(self, run_dir: Path, every: int, rounds: int, keep: int = 2):
        self.run_dir, self.every, self.rounds, self.keep = run_dir, every, rounds, keep
        self._saved: int | None = None

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        if state.round % self.every == 0 or state.round == self.rounds:
            self._save(state)

    def on_run_end(self, state: ServerState) -> None:
        """A run a callback stopped early ends with a checkpoint of its last round too."""
        if self._saved != state.round:
            self._save(state)

    def _save(self, state: ServerState) -> None:
        save_checkpoint(self.run_dir, state)
        self._saved = state.round
        self._prune()

    def _prune(self) -> None:
        metas = sorted((self.run_dir / CHECKPOINT_DIR).glob("round-*.json"))
        for meta in metas[: -self.keep]:
            meta.with_suffix(".safetensors").unlink(missing_ok=True)
            meta.unlink()
