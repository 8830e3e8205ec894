"""The manifests' token set-up works with the Ray in this repo, for real.

cluster/*.yaml give every Ray container RAY_AUTH_MODE=token, an empty RAY_AUTH_TOKEN
and RAY_AUTH_TOKEN_PATH naming the Secret mounted as a file. This test takes those
variables from the manifests (the head's, a worker's and the submitter's), puts a
token file where the Secret would be, and runs what the pods run: `ray start --head`,
`ray health-check` (KubeRay's wait-gcs-ready init container), `ray job submit`. The
dashboard must refuse requests without the token, the job must succeed, and the job's
environment must not contain the token. HOME is private and empty, so no
~/.ray/auth_token can stand in for the file; only this head's processes are stopped.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

import pytest
import yaml

from ray_head import RAY, VENV_BIN, _free_ports, _stop_session

pytestmark = pytest.mark.timeout(300)
CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def _manifest_env(container: dict) -> dict[str, str]:
    env = {}
    for e in container.get("env", []):
        assert "valueFrom" not in e, f"{container['name']}: {e['name']} comes from elsewhere; this test needs values"
        env[e["name"]] = e["value"]
    return env


def _containers() -> dict[str, dict]:
    cluster = next(d for d in yaml.safe_load_all((CLUSTER / "raycluster.yaml").read_text()) if d and d["kind"] == "RayCluster")
    job = next(d for d in yaml.safe_load_all((CLUSTER / "rayjob.yaml").read_text()) if d and d["kind"] == "RayJob")
    return {
        "head": cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0],
        "worker": cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0],
        "submitter": job["spec"]["submitterPodTemplate"]["spec"]["containers"][0],
    }


def _dashboard_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_ray_authenticates_with_the_token_file_and_keeps_it_out_of_the_environment():
    root = Path(tempfile.mkdtemp(prefix="rtf-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    home = root / "home"
    home.mkdir()
    token = secrets.token_hex(32)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")

    def pod_env(container: dict) -> dict[str, str]:
        """The container's variables, the token path moved to where this test put the 'Secret'."""
        env = _manifest_env(container)
        assert env.get("RAY_AUTH_MODE") == "token" and env.get("RAY_AUTH_TOKEN") == ""
        mounted = PurePosixPath(env["RAY_AUTH_TOKEN_PATH"])
        secret_dir = root / "secret" / mounted.parent.name
        secret_dir.mkdir(parents=True, exist_ok=True)
        (secret_dir / mounted.name).write_text(token)
        env["RAY_AUTH_TOKEN_PATH"] = str(secret_dir / mounted.name)
        return {**base, **env}

    containers = _containers()
    gcs, dash, client, node_mgr, obj_mgr, metrics, agent_http, agent_grpc, renv = _free_ports(9)
    with open(root / "ray-start.log", "w") as log:
        start = subprocess.Popen(
            [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
             f"--port={gcs}", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
             f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}", f"--metrics-export-port={metrics}",
             f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--runtime-env-agent-port={renv}", "--num-cpus=1", "--object-store-memory=100000000",
             f"--temp-dir={root / 'ray'}", "--disable-usage-stats"],
            env=pod_env(containers["head"]), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    sid = start.pid  # every process of this head inherits the session: the teardown stops exactly those
    try:
        start.wait(timeout=120)
        assert start.returncode == 0, f"ray start failed with the manifest's variables:\n{(root / 'ray-start.log').read_text()}"
        assert not (home / ".ray").exists(), "Ray wrote a token of its own instead of using the file"
        jobs_api = f"http://127.0.0.1:{dash}/api/jobs/"
        assert _dashboard_status(jobs_api, None) == 401
        assert _dashboard_status(jobs_api, "not-the-token") == 403
        assert _dashboard_status(jobs_api, token) == 200

        health = subprocess.run([str(RAY), "health-check", "--address", f"127.0.0.1:{gcs}"],
                                env=pod_env(containers["worker"]), capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, f"ray health-check with a worker's variables failed:\n{health.stderr}"
        # ... and it is the file that counts: a wrong token in it is refused.
        (root / "wrong").write_text("not-the-token")
        wrong = subprocess.run([str(RAY), "health-check", "--address", f"127.0.0.1:{gcs}"],
                               env={**pod_env(containers["worker"]), "RAY_AUTH_TOKEN_PATH": str(root / "wrong")},
                               capture_output=True, text=True, timeout=60)
        assert wrong.returncode != 0, "ray health-check passed with a wrong token file"

        probe = "import json, os; print('JOB-ENV', json.dumps(dict(os.environ)))"
        submit = subprocess.run(
            [str(RAY), "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--", "python", "-c", probe],
            env=pod_env(containers["submitter"]), capture_output=True, text=True, timeout=180,
        )
        logs = f"--- stdout\n{submit.stdout}\n--- stderr\n{submit.stderr}"
        assert submit.returncode == 0 and "succeeded" in submit.stdout, logs
        (line,) = [ln for ln in submit.stdout.splitlines() if ln.startswith("JOB-ENV ")]
        job_env = json.loads(line.removeprefix("JOB-ENV "))
        assert job_env.get("RAY_AUTH_TOKEN") == "", job_env.get("RAY_AUTH_TOKEN")
        assert not [k for k, v in job_env.items() if token in v], "the token is in the job's environment"
    finally:
        leftovers = _stop_session(sid)
        shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"processes of the test head survived SIGKILL: {leftovers}"
