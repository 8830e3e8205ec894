"""A real multi-node Ray cluster on this machine for a test: a head and worker nodes,
each started with `ray start` (the worker nodes with `--address`), each with one CPU,
its own temp dir, object store and process session, token authentication on.

Every node runs in a session of its own (start_new_session), so a node is killed
exactly (its raylet and every process under it, by pid) and the teardown stops only
this cluster's processes: `ray stop` would stop every Ray on the machine.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ray_head import RAY, VENV_BIN, _free_ports, _session_members, _stop_session

# The head notices a node that stopped answering after about 1.5 s, not Ray's default ~30 s.
HEALTH_CHECK = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_timeout_ms": 500}


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        home = root / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
        env.update(HOME=str(home), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
                   PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
        gen = subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                             timeout=120, check=False)
        assert gen.returncode == 0, f"ray get-auth-token --generate failed:\n{gen.stdout}\n{gen.stderr}"
        self.env = env
        self.address = ""
        self.sessions: dict[str, int] = {}  # node name -> session id of its processes

    def _start(self, name: str, args: list[str], resources: dict | None = None) -> int:
        """`resources`: what the node declares beyond its one CPU (e.g. {"GPU": 1, "gpu_group": 2})."""
        node_mgr, obj_mgr, metrics, agent_http, agent_grpc, renv = _free_ports(6)
        log_path = self.root / f"{name}.log"
        extra = dict(resources or {})
        if "GPU" in extra:
            args = [*args, f"--num-gpus={extra.pop('GPU'):g}"]  # fake GPUs: Ray only counts them
        if extra:
            args = [*args, f"--resources={json.dumps(extra)}"]
        with open(log_path, "w") as log:
            start = subprocess.Popen(
                [str(RAY), "start", *args, "--node-ip-address=127.0.0.1", "--num-cpus=1",
                 "--object-store-memory=80000000", f"--node-manager-port={node_mgr}",
                 f"--object-manager-port={obj_mgr}", f"--metrics-export-port={metrics}",
                 f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
                 f"--runtime-env-agent-port={renv}", f"--temp-dir={self.root / name}", "--disable-usage-stats"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.sessions[name] = start.pid
        start.wait(timeout=120)
        assert start.returncode == 0, f"ray start ({name}) failed:\n{log_path.read_text()}"
        return start.pid

    def start_head(self, resources: dict | None = None) -> None:
        gcs, client = _free_ports(2)
        self.address = f"127.0.0.1:{gcs}"
        self._start("head", ["--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                             "--include-dashboard=false", f"--system-config={json.dumps(HEALTH_CHECK)}"], resources)

    def add_node(self, name: str, resources: dict | None = None) -> None:
        self._start(name, [f"--address={self.address}"], resources)

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL the node's raylet and everything under it at once, as a machine that dies; returns the pids."""
        sid = self.sessions.pop(name)
        pids = _session_members(sid)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _session_members(sid), 10, f"node {name}'s processes to die")
        return pids

    def processes(self, name: str) -> list[int]:
        return _session_members(self.sessions[name])

    def stop(self) -> list[int]:
        leftovers = []
        for name in list(self.sessions):
            leftovers += _stop_session(self.sessions.pop(name))
        return leftovers


def start_cluster(worker_nodes: int, head: dict | None = None, nodes: dict | None = None) -> Cluster:
    """A head and `worker_nodes` worker nodes, one CPU each (plus `head` / `nodes`: fake
    GPUs and custom resources, see Cluster._start); call `.stop()` when done."""
    # A short root: Ray's unix socket paths must stay under ~107 bytes.
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="rsn-", dir="/tmp")))
    try:
        cluster.start_head(head)
        for i in range(worker_nodes):
            cluster.add_node(f"node{i + 1}", nodes)
    except BaseException:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
        raise
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    leftovers = cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)
    assert not leftovers, f"Ray processes of the test cluster survived SIGKILL: {leftovers}"


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail (not hang) after `timeout_s`."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
