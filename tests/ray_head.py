"""A real Ray head of a test's own, token authentication on, stopped without touching
anyone else's Ray.

What a user does (Ray 2.60), and what the fixture does with the same commands:

    ray get-auth-token --generate          # writes the token to ~/.ray/auth_token
    export RAY_AUTH_MODE=token             # every Ray process and CLI call needs it
    ray start --head --dashboard-host=127.0.0.1 ...

The token is looked up in RAY_AUTH_TOKEN (the value), then RAY_AUTH_TOKEN_PATH (a
file), then ~/.ray/auth_token; HTTP clients send `Authorization: Bearer <token>`.
Here HOME points at a private folder so the test never reads or writes the real
~/.ray/auth_token, and a stray RAY_AUTH_TOKEN / RAY_ADDRESS in the environment is
removed. The head gets its own free ports and temp dir, and is stopped by killing
exactly its own processes: `ray stop` would kill every Ray process on the machine,
including other tests' and other people's.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_members(sid: int) -> list[int]:
    """Live processes of session `sid` (zombies excluded)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.getsid(pid) != sid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            members.append(pid)
    return members


def _stop_session(sid: int, grace_s: float = 10.0) -> list[int]:
    """SIGTERM every process of the head's session, SIGKILL what is left after
    `grace_s`; returns the pids still alive after that (should be none)."""

    def signal_all(sig):
        for pid in _session_members(sid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_all(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _session_members(sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _session_members(sid)


class Head:
    def __init__(self, env: dict, dashboard: str, token: str, sid: int, temp_dir: Path):
        self.env, self.dashboard, self.token, self.sid, self.temp_dir = env, dashboard, token, sid, temp_dir

    def http(self, path: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(self.dashboard + path, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


@pytest.fixture
def ray_head():
    assert RAY.is_file(), f"the ray CLI is missing at {RAY}: run `make setup`"
    # A short root: Ray's unix socket paths (<temp>/session_<date>_<pid>/sockets/plasma_store)
    # must stay under the ~107-byte limit, which pytest's tmp_path can exceed.
    root = Path(tempfile.mkdtemp(prefix="rsj-", dir="/tmp"))
    home = root / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(
        HOME=str(home),
        RAY_AUTH_MODE="token",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
    )

    # The token, the way a user makes one: printed, and kept in ~/.ray/auth_token.
    gen = subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert gen.returncode == 0, f"ray get-auth-token --generate failed:\n{gen.stdout}\n{gen.stderr}"
    token_file = home / ".ray" / "auth_token"
    assert token_file.is_file(), f"Ray 2.60 should keep the token in ~/.ray/auth_token; {home}/.ray has {list((home / '.ray').glob('*'))}"
    token = token_file.read_text().strip()
    assert token and gen.stdout.strip() == token

    gcs, dash, client, node_mgr, obj_mgr, metrics, agent_http, agent_grpc, renv = _free_ports(9)
    start_log = root / "ray-start.log"
    with open(start_log, "w") as log:
        start = subprocess.Popen(
            [
                str(RAY), "start", "--head",
                "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
                f"--metrics-export-port={metrics}", f"--dashboard-agent-listen-port={agent_http}",
                f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={renv}",
                "--num-cpus=2", "--object-store-memory=200000000",
                f"--temp-dir={root / 'ray'}", "--disable-usage-stats",
            ],
            # A file, not a pipe: the daemons ray start leaves behind could hold a pipe open.
            env=env, stdout=log, stderr=subprocess.STDOUT,
            # Its own session: every process of this head (GCS, raylet, dashboard, worker
            # and actor processes) inherits the session id, which is how the teardown finds
            # them and only them. (A job's entrypoint gets a session of its own, but Ray
            # kills it when its supervisor actor, one of ours, dies.)
            start_new_session=True,
        )
    sid = start.pid
    try:
        start.wait(timeout=120)
        assert start.returncode == 0, f"ray start failed:\n{start_log.read_text()}"
        yield Head(env, f"http://127.0.0.1:{dash}", token, sid, root / "ray")
    finally:
        leftovers = _stop_session(sid)
        shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"Ray processes of the test head survived SIGKILL: {leftovers}"
