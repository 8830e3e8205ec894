"""A real Prometheus (Debian's `prometheus` package) scraping a real run with the
project's dashboards/prometheus.yml, queried through its HTTP API."""
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from raysim.config import MetricsConfig
from raysim.experiment import execute, new_run
from raysim.results.round_log import read_rounds

CONFIG = Path(__file__).resolve().parents[1] / "dashboards" / "prometheus.yml"
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"


def _tool(name: str) -> str:
    """Only a developer machine without the package may skip, never CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} missing in CI: .ci/run must apt-get install prometheus")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jobs(tree: dict) -> dict[str, dict]:
    return {job["job_name"]: job for job in tree["scrape_configs"]}


def derived_config(exporter_port: int) -> dict:
    """The project's config with the driver target moved to this test's exporter port."""
    tree = yaml.safe_load(CONFIG.read_text())
    jobs(tree)["raysim"]["static_configs"] = [{"targets": [f"127.0.0.1:{exporter_port}"]}]
    return tree


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", duration)
    assert m, f"unexpected Prometheus duration {duration!r}"
    return float(m[1]) / (1000 if m[2] == "ms" else 1)


def get_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus on loopback with a config; returns its base URL. Our own process,
    not the Debian package's service."""
    binary = _tool("prometheus")
    procs = []

    def start(tree: dict) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(tree))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("w")
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}"], stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited {proc.returncode}:\n{(tmp_path / 'prometheus.log').read_text()}")
            try:
                if urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200:
                    return url
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        pytest.fail(f"prometheus not ready in 30 s:\n{(tmp_path / 'prometheus.log').read_text()}")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_config_scrapes_the_driver_default_port_and_ray_service_discovery(tmp_path):
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    tree = yaml.safe_load(CONFIG.read_text())
    scrape = jobs(tree)
    assert scrape["raysim"]["static_configs"] == [{"targets": [f"127.0.0.1:{MetricsConfig().port}"]}]
    [sd] = scrape["ray"]["file_sd_configs"]
    assert sd["files"] == [RAY_SD_FILE] and RAY_SD_FILE.endswith("/" + PROMETHEUS_SERVICE_DISCOVERY_FILE)
    assert seconds(tree["global"]["scrape_interval"]) <= 5  # runs last seconds
    derived = tmp_path / "derived.yml"
    derived.write_text(yaml.safe_dump(derived_config(9999)))
    for path in (CONFIG, derived):
        check = subprocess.run([_tool("promtool"), "check", "config", str(path)], capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_scrapes_a_real_run_to_its_last_round(prometheus, small_config, tmp_path):
    tree = derived_config(exporter_port := free_port())
    url = prometheus(tree)
    # Prometheus hands discovered targets to its scrapers only every 5 s: wait until the
    # driver's target is there, or a seconds-long run may end before it is ever scraped.
    deadline = time.monotonic() + 30
    while not any(t["labels"]["job"] == "raysim" for t in get_json(f"{url}/api/v1/targets")["data"]["activeTargets"]):
        assert time.monotonic() < deadline, "Prometheus never listed the raysim target"
        time.sleep(0.2)
    rounds = 4
    # Stay up for at least two scrapes after the last round so Prometheus sees it.
    linger = 2.5 * seconds(tree["global"]["scrape_interval"])
    cfg = small_config(name="promtest", rounds=rounds, metrics={"enabled": True, "port": exporter_port,
                                                                "linger_s": linger})
    run_dir = new_run(cfg, tmp_path / "runs")
    execute(cfg, run_dir)

    train = [r for r in read_rounds(run_dir) if r["phase"] == "train"]
    want = {
        "raysim_rounds_completed_total": rounds,
        'raysim_clients_total{outcome="done",phase="train"}': sum(r["clients_done"] for r in train),
        'raysim_upload_bytes_total{phase="train"}': sum(r["bytes_up"] for r in train),
        "raysim_round_wall_seconds_count": rounds,
        "raysim_population_clients": cfg.data.num_clients,
    }

    def query(expr: str) -> list[dict]:
        # The exporter is gone by now, so the series are stale at "now": ask for the last
        # value Prometheus stored, which is the final one only if linger let it scrape.
        q = urllib.parse.quote(f"last_over_time({expr}[5m])")
        body = get_json(f"{url}/api/v1/query?query={q}")
        assert body["status"] == "success", body
        return body["data"]["result"]

    deadline = time.monotonic() + 20
    while True:
        got = {}
        for expr in want:
            result = query(expr)
            got[expr] = float(result[0]["value"][1]) if len(result) == 1 else result
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == want

    [series] = query("raysim_rounds_completed_total")
    assert series["metric"]["experiment"] == "promtest" and series["metric"]["algorithm"] == "fedavg"
    assert series["metric"]["job"] == "raysim"


@pytest.mark.timeout(300)
def test_prometheus_finds_ray_nodes_through_the_service_discovery_file(prometheus, ray_head):
    """The `ray` job of dashboards/prometheus.yml, as it is, pointed at a real head's file."""
    sd_file = ray_head.temp_dir / Path(RAY_SD_FILE).name
    deadline = time.monotonic() + 60
    while not sd_file.is_file():  # written by the head's dashboard shortly after start
        assert time.monotonic() < deadline, f"Ray wrote no {sd_file.name} under {ray_head.temp_dir}"
        time.sleep(0.5)
    tree = derived_config(free_port())
    [sd] = jobs(tree)["ray"]["file_sd_configs"]
    sd["files"] = [str(sd_file)]  # only the path; the config's refresh interval stays
    url = prometheus(tree)

    def ray_targets() -> list[dict]:
        active = get_json(f"{url}/api/v1/targets")["data"]["activeTargets"]
        return [t for t in active if t["scrapePool"] == "ray"]  # the job in our config; Ray labels some groups itself

    def ray_series() -> int:
        q = urllib.parse.quote('count({__name__=~"ray_.+"})')
        result = get_json(f"{url}/api/v1/query?query={q}")["data"]["result"]
        return int(result[0]["value"][1]) if result else 0

    def listed() -> set[str]:
        return {target for group in json.loads(sd_file.read_text()) for target in group["targets"]}

    # Every endpoint Ray listed becomes a target, and Ray's metrics arrive from them.
    deadline = time.monotonic() + 90
    while not ({t["labels"]["instance"] for t in ray_targets()} == listed()
               and any(t["health"] == "up" for t in ray_targets()) and ray_series() > 0):
        assert time.monotonic() < deadline, f"Ray listed {sd_file.read_text()}; Prometheus has {ray_targets()}"
        time.sleep(1)
