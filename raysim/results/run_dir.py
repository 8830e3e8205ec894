"""Each run gets a folder of its own inside the output folder; an earlier run's folder
is never reused, and one process at a time works in a folder (a lock)."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

from raysim.config import ConfigError, is_plain_name

LOCK_FILE = ".lock"


def _output_folder(parent: Path) -> Path:
    """`parent` created if needed, or a ConfigError saying why it cannot hold run folders."""
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"output folder {parent}: is a file, not a folder; give --out (or output.dir) a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output folder {parent}: cannot create it ({exc.strerror}); give --out (or output.dir) "
                          "a folder you can write to") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {parent}: not writable; give --out (or output.dir) a folder you can write to")
    return parent


def create_run_dir(parent: Path, name: str) -> Path:
    if not is_plain_name(name):  # the config already refuses it; the folder must not escape
        raise ConfigError(f"name {name!r} is not a plain name; the run folder must stay inside {parent}")
    parent = _output_folder(parent)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = parent / (f"{name}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir()  # atomic: two runs started in the same second get different folders
        except FileExistsError:
            continue
        if path.resolve().parent != parent.resolve():
            path.rmdir()
            raise ConfigError(f"name {name!r}: the run folder would not be inside {parent}")
        return path
    raise ConfigError(f"output folder {parent}: 1000 run folders named {name}-{stamp} already exist")


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold `run_dir` for this process; another process that tries is refused. The kernel
    drops the lock when the process ends, however it ends, so a killed run never leaves
    its folder locked."""
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"{run_dir} is in use by another raysim process (pid {holder}); wait for it to end, "
                              "or start a new run instead") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_jsonl(path: Path, lines: list[dict]) -> None:
    if lines:
        with path.open("a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


def cut_back_jsonl(path: Path, key: str, last_round: int) -> None:
    """Keep the lines of an appended log whose `key` is at most `last_round` (a resume's checkpoint)."""
    if path.exists():
        kept = [line for line in read_jsonl(path) if line[key] <= last_round]
        write_atomic(path, "".join(json.dumps(line) + "\n" for line in kept).encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
