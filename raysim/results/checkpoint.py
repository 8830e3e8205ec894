"""Checkpoints as safetensors (tensors) plus JSON (everything else): no pickle anywhere.

Each checkpoint's JSON carries a SHA-256 over its tensor file, its round, its server
metadata and the experiment's identity (the resolved config minus the fields a resume
may change), so a truncated file, an edited round number or a checkpoint from another
config is recognised as such instead of being trusted.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial
from raysim.results.run_dir import write_atomic

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FORMAT = 2  # 1: no hash (before checkpoints were verified)


class DamagedCheckpoint(Exception):
    """A checkpoint that fails verification; the message says why."""


def _digest(tensor_bytes: bytes, round_: int, meta: dict, identity: dict) -> str:
    h = hashlib.sha256(tensor_bytes)
    h.update(json.dumps({"round": round_, "meta": meta, "identity": identity}, sort_keys=True).encode())
    return h.hexdigest()


def _stem(run_dir: Path, round_: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"round-{round_:05d}"


def save_checkpoint(run_dir: Path, state: ServerState, identity: dict | None = None) -> Path:
    """`identity`: what the resumed config must match (experiment.config_identity)."""
    identity = identity or {}
    (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
    stem = _stem(run_dir, state.round)
    tensors = {f"weights/{k}": v.contiguous() for k, v in state.weights.items()}
    tensors |= {f"buffers/{k}": v.contiguous() for k, v in state.buffers.items()}
    data = st_save(tensors)
    write_atomic(stem.with_suffix(".safetensors"), data)
    # The JSON is written last: a checkpoint exists only once its metadata does.
    meta = {"format": FORMAT, "round": state.round, "meta": state.meta, "identity": identity,
            "sha256": _digest(data, state.round, state.meta, identity)}
    write_atomic(stem.with_suffix(".json"), json.dumps(meta, indent=2).encode())
    return stem


def checkpoint_stems(run_dir: Path) -> list[Path]:
    """Every checkpoint's stem, newest first."""
    return [m.with_suffix("") for m in sorted((run_dir / CHECKPOINT_DIR).glob("round-*.json"), reverse=True)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    stems = checkpoint_stems(run_dir)
    return stems[0] if stems else None


def read_checkpoint(stem: Path) -> tuple[ServerState, dict]:
    """(state, identity) of a verified checkpoint; DamagedCheckpoint if it fails a check."""
    try:
        meta = json.loads(stem.with_suffix(".json").read_text())
        data = stem.with_suffix(".safetensors").read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedCheckpoint(f"unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DamagedCheckpoint(f"not a format-{FORMAT} checkpoint")
    round_, identity = meta.get("round"), meta.get("identity", {})
    if not isinstance(round_, int) or stem.name != f"round-{round_:05d}":
        raise DamagedCheckpoint(f"its round {round_!r} does not match its file name")
    if meta.get("sha256") != _digest(data, round_, meta.get("meta"), identity):
        raise DamagedCheckpoint("its content does not match its SHA-256 (truncated or edited)")
    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise DamagedCheckpoint(f"unreadable tensors ({exc})") from None
    weights = {k.removeprefix("weights/"): v for k, v in tensors.items() if k.startswith("weights/")}
    buffers = {k.removeprefix("buffers/"): v for k, v in tensors.items() if k.startswith("buffers/")}
    return ServerState(round_, weights, buffers, meta["meta"]), identity


def load_checkpoint(stem: Path) -> ServerState:
    return read_checkpoint(stem)[0]


def newest_intact(run_dir: Path) -> tuple[ServerState, dict, list[str]] | None:
    """(state, identity, warnings) of the newest checkpoint that verifies, passing over
    damaged newer ones (each named in a warning); None when there is none."""
    warnings = []
    for stem in checkpoint_stems(run_dir):
        try:
            state, identity = read_checkpoint(stem)
        except DamagedCheckpoint as exc:
            warnings.append(f"checkpoint {stem.name} is damaged: {exc}; trying the one before")
            continue
        return state, identity, warnings
    return None


class Checkpointer(Callback):
    def __init__(self, run_dir: Path, every: int, rounds: int, identity: dict | None = None, keep: int = 2):
        self.run_dir, self.every, self.rounds, self.keep = run_dir, every, rounds, keep
        self.identity = identity or {}
        self._saved: int | None = None

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        if state.round % self.every == 0 or state.round == self.rounds:
            self._save(state)

    def on_run_end(self, state: ServerState) -> None:
        """A run a callback stopped early ends with a checkpoint of its last round too."""
        if self._saved != state.round:
            self._save(state)

    def _save(self, state: ServerState) -> None:
        save_checkpoint(self.run_dir, state, self.identity)
        self._saved = state.round
        self._prune()

    def _prune(self) -> None:
        """Keep the newest `keep` (two by default: one to fall back on if the newest is damaged)."""
        for stem in checkpoint_stems(self.run_dir)[self.keep:]:
            stem.with_suffix(".json").unlink()  # first: without it the checkpoint no longer exists
            stem.with_suffix(".safetensors").unlink(missing_ok=True)
