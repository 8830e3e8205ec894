"""`ray job submit` of `raysim run` to a real local Ray head, token authentication on
(the head: tests/ray_head.py), as a user does it:

    ray job submit --address http://127.0.0.1:8265 -- raysim run CONFIG --no-progress
"""
from __future__ import annotations

import json
import subprocess
import uuid

import pyarrow.parquet as pq
import pytest

from ray_head import RAY
from raysim.config import config_to_yaml

pytestmark = pytest.mark.timeout(300)

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def test_ray_job_submit_runs_raysim_on_a_token_authenticated_head(ray_head, small_config, tmp_path):
    head = ray_head
    # Authentication is really on: no token 401, a wrong one 403, the right one 200.
    assert head.http("/api/jobs/")[0] == 401
    assert head.http("/api/jobs/", token="not-the-token")[0] == 403
    assert head.http("/api/jobs/", token=head.token)[0] == 200

    rounds = 3
    # backend.name: ray, so that with the Ray backend the job's driver joins the cluster
    # it runs on ($RAY_ADDRESS, which Ray Jobs sets for the entrypoint).
    cfg = small_config(rounds=rounds, backend={"name": "ray", "num_workers": 2, "num_cpus_per_worker": 1})
    config = tmp_path / "job.yaml"
    config.write_text(config_to_yaml(cfg))
    out = tmp_path / "runs"
    submission = f"raysim-test-{uuid.uuid4().hex[:8]}"
    # The runtime environment the job really needs: nothing to ship (raysim is installed
    # on the node), one BLAS thread per process on a small shared machine.
    runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1"}}

    try:
        submit = subprocess.run(
            [
                str(RAY), "job", "submit", "--address", head.dashboard, "--submission-id", submission,
                "--runtime-env-json", json.dumps(runtime_env),
                "--", "raysim", "run", str(config), "--no-progress", "--out", str(out),
            ],
            env=head.env, capture_output=True, text=True, timeout=240, check=False,
        )
        logs = f"--- stdout\n{submit.stdout}\n--- stderr\n{submit.stderr}"
        code, body = head.http(f"/api/jobs/{submission}", token=head.token)
        assert code == 200, f"job {submission} unknown to the head ({code}: {body})\n{logs}"
        status = json.loads(body)["status"]
        assert submit.returncode == 0 and status == "SUCCEEDED", f"job {submission}: {status}\n{logs}"
        assert "final accuracy" in submit.stdout, f"the job's own output should reach `ray job submit`\n{logs}"
        # The job's driver joined this head ($RAY_ADDRESS) rather than starting a Ray of its
        # own: its worker actors are in this cluster's state, with the job's runtime env.
        code, body = head.http("/api/v0/actors?detail=1&limit=1000", token=head.token)
        assert code == 200, body
        actors = [a for a in json.loads(body)["data"]["result"]["result"] if a["class_name"] != "JobSupervisor"]
        assert len(actors) >= cfg.backend.num_workers, f"expected the run's {cfg.backend.num_workers} workers on this head, got {actors}"
        for actor in actors:
            assert actor["required_resources"].get("CPU") == cfg.backend.num_cpus_per_worker, actor
            assert json.loads(actor["serialized_runtime_env"])["env_vars"] == runtime_env["env_vars"], actor
    finally:
        code, body = head.http(f"/api/jobs/{submission}", token=head.token)
        if code == 200 and json.loads(body)["status"] not in TERMINAL:
            head.http(f"/api/jobs/{submission}/stop", token=head.token, method="POST")

    (run,) = list(out.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    table = pq.read_table(run / "rounds.parquet")
    assert summary["rounds"] == rounds
    assert len(table) == rounds
    assert sum(table.column("clients_done").to_pylist()) > 0
    assert 0.0 <= summary["final_accuracy"] <= 1.0
