"""A local run's Ray listens on loopback only (docs/network.md).

`raysim run` with backend.name=ray and no address starts its own Ray instance. The test
runs exactly that in a process of its own (this pytest session's Ray would otherwise
be reused), watches the listening sockets of that process and of every process below
it (GCS, raylet, dashboard and its agents, the worker actors) for the whole run, and
asserts that not one of them is reachable beyond 127.0.0.1 / ::1.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil
import pytest

from ray_head import _free_ports


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str  # the process title: gcs_server, raylet, ray::ClientWorker, ...
    protocol: str
    ip: str
    port: int


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 and ::1, also written as IPv4 inside IPv6 (::ffff:127.0.0.1, what a
    dual-stack gRPC server bound to 127.0.0.1 shows)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def listeners(root: psutil.Process) -> set[Listener]:
    """TCP sockets in LISTEN and unconnected UDP sockets of `root` and its descendants."""
    try:
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for proc in procs:
        try:
            title = proc.name()
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for c in conns:
            tcp_listen = c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN
            udp_bound = c.type == socket.SOCK_DGRAM and not c.raddr
            if tcp_listen or udp_bound:
                found.add(Listener(proc.pid, title, "tcp" if tcp_listen else "udp", c.laddr.ip, c.laddr.port))
    return found


def _kill_tree(root: psutil.Process) -> None:
    """Only what this test started: the run and its descendants, by pid."""
    try:
        procs = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def test_is_loopback_accepts_only_loopback_addresses():
    assert all(is_loopback(ip) for ip in ("127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1"))
    assert not any(is_loopback(ip) for ip in ("0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2", "fe80::1%eth0"))


def test_a_local_ray_run_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # Token authentication stays on; a token of the test's own, so ~/.ray is not read.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    # The autoscaler monitor's and the dashboard's own metrics servers have fixed default
    # ports (44217, 44227); another Ray on this machine may hold those, and then they do
    # not start at all. Free ports of this test's own, so they start and are checked too.
    monitor_port, dashboard_metrics_port = _free_ports(2)
    env.update(AUTOSCALER_METRIC_PORT=str(monitor_port), DASHBOARD_METRIC_PORT=str(dashboard_metrics_port))
    # metrics.enabled also starts Ray's dashboard (experiment.backend_session) and the
    # driver's exporter: every listener a local run can have.
    cmd = [sys.executable, "-m", "raysim.cli", "run", "--set", "backend.name=ray", "--set", "backend.num_workers=2",
           "--set", "metrics.enabled=true", "--set", "metrics.port=0", "--set", "rounds=4",
           "--set", "data.num_clients=20", "--set", "clients.per_round=4", "--out", str(tmp_path), "--no-progress"]
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    seen: set[Listener] = set()
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= listeners(root)
            time.sleep(0.2)
        assert proc.poll() is not None, f"the run did not finish in 300 s:\n{log.read_text()[-3000:]}"
    finally:
        _kill_tree(root)
        proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()[-3000:]

    # The watch really saw the run's Ray: the driver, the GCS, the raylet, both workers.
    titles = {x.process for x in seen}
    assert any(x.pid == proc.pid for x in seen), f"no listener of the driver seen; saw {sorted(titles)}"
    assert {"gcs_server", "raylet"} <= titles, f"saw {sorted(titles)}"
    workers = {x.pid for x in seen if x.process.startswith("ray::ClientWorker")}
    assert len(workers) == 2, f"want both worker actors' listeners, saw {sorted(titles)}"
    ports = {x.port for x in seen}
    assert {monitor_port, dashboard_metrics_port} <= ports, f"the monitor's and the dashboard's metrics servers: {sorted(seen)}"

    open_beyond_loopback = sorted((x.process, x.protocol, x.ip, x.port) for x in seen if not is_loopback(x.ip))
    assert not open_beyond_loopback, f"listening beyond loopback: {open_beyond_loopback}"


def test_the_local_session_refuses_a_node_ip_beyond_loopback():
    """If a Ray upgrade stops honouring the local-only mode, the run stops (and shuts
    that Ray down) instead of running with its ports open."""
    from raysim.engine.ray_backend import require_loopback_node_ip

    for ip in ("127.0.0.1", "::1"):
        require_loopback_node_ip(ip)
    for ip in ("192.0.2.2", "0.0.0.0", "2001:db8::1"):
        with pytest.raises(RuntimeError, match=f"node IP {ip}, not loopback"):
            require_loopback_node_ip(ip)
