"""The driver's Prometheus exporter, scraped over HTTP as Prometheus would, and the
names Ray really exports for the per-worker counters."""
import http.server
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import fields
from typing import ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raysim.config import ConfigError, MetricsConfig
from raysim.engine.record import Evaluation, RoundRecord
from raysim.experiment import execute, new_run
from raysim.telemetry.prometheus import PrometheusExporter

RUN = {"experiment": "exp1", "algorithm": "autoflip"}


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of every raysim_ sample the exporter serves."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith("raysim_")}


def value(samples, name, **labels):
    return samples[(name, frozenset((RUN | labels).items()))]


def names(samples) -> set[str]:
    return {name for name, _ in samples}


def record(round_no, phase="train", accuracy=None, loss=None, workers=None, busy_fraction=None, **extra):
    """A RoundRecord as the loop builds it; `extra` sets counters, or else the algorithm's metrics."""
    counters = {"clients_sampled": 5, "clients_done": 4, "clients_dropped": 1, "clients_failed": 0, "train_loss": 0.5,
                "flops_executed": 2.0e9, "flops_effective": 1.0e9, "bytes_down": 1000, "bytes_up": 400,
                "client_train_wall_s": 0.3, "sim_time_s": 12.0, "wall_time_s": 0.5}
    names = {f.name for f in fields(RoundRecord)}
    counters |= {k: v for k, v in extra.items() if k in names}
    pool = {"workers": workers, "busy_fraction": busy_fraction} if workers is not None else {}
    return RoundRecord(round_no, phase, **counters, pool=pool,
                       metrics={k: v for k, v in extra.items() if k not in names},
                       evaluation=Evaluation(accuracy, loss) if accuracy is not None else None)


def refused(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except urllib.error.URLError:
        return True
    return False


@pytest.fixture
def exporter():
    made = []

    def make(**cfg):
        exp = PrometheusExporter(MetricsConfig(**({"port": 0} | cfg)), experiment="exp1", algorithm="autoflip",
                                 population=20)
        made.append(exp)
        return exp

    yield make
    for exp in made:
        exp.close()


def test_rounds_clients_bytes_and_histograms_from_the_records(exporter):
    exp = exporter()
    assert exp.port > 0
    explore = record(0, "explore", clients_sampled=5, clients_done=5, clients_dropped=0, bytes_down=700,
                     bytes_up=300, flops_executed=9.0e9, flops_effective=9.0e9, wall_time_s=2.0)
    train = [record(1, wall_time_s=0.25, sim_time_s=30.0),
             record(2, clients_done=3, clients_dropped=1, clients_failed=1, wall_time_s=0.75, sim_time_s=4000.0)]
    for rec in [explore, *train]:
        exp.on_round_end(rec, None, None)
    s = scrape(exp.port)

    # Exploration is billed under its phase but is not a training round.
    assert value(s, "raysim_rounds_completed_total") == 2
    assert value(s, "raysim_clients_total", outcome="done", phase="explore") == 5
    assert value(s, "raysim_clients_total", outcome="done", phase="train") == 4 + 3
    assert value(s, "raysim_clients_total", outcome="dropped", phase="train") == 2
    assert value(s, "raysim_clients_total", outcome="failed", phase="train") == 1
    assert value(s, "raysim_download_bytes_total", phase="explore") == 700
    assert value(s, "raysim_download_bytes_total", phase="train") == 2000
    assert value(s, "raysim_upload_bytes_total", phase="train") == 800
    assert value(s, "raysim_flops_executed_total", phase="explore") == 9.0e9
    assert value(s, "raysim_flops_effective_total", phase="train") == 2.0e9
    # The last training round, not the exploration phase.
    assert value(s, "raysim_round_clients", outcome="sampled") == 5
    assert value(s, "raysim_round_clients", outcome="done") == 3
    assert value(s, "raysim_round_clients", outcome="failed") == 1
    assert value(s, "raysim_client_updates_per_second") == pytest.approx(3 / 0.75)
    assert value(s, "raysim_round_wall_seconds_count") == 2
    assert value(s, "raysim_round_wall_seconds_sum") == pytest.approx(1.0)
    assert value(s, "raysim_round_simulated_seconds_count") == 2
    # 4000 s lies beyond the last bucket (1 h): only +Inf holds it.
    assert value(s, "raysim_round_simulated_seconds_bucket", le="3600.0") == 1
    assert value(s, "raysim_round_simulated_seconds_bucket", le="+Inf") == 2
    assert value(s, "raysim_population_clients") == 20
    # Every series is labelled with its run, and nothing per client.
    for name, labels in s:
        keys = dict(labels)
        assert keys["experiment"] == "exp1" and keys["algorithm"] == "autoflip", name
        assert set(keys) <= {"experiment", "algorithm", "outcome", "phase", "le"}, name


def test_optional_gauges_appear_only_when_the_record_has_them(exporter):
    exp = exporter()
    optional = {"raysim_global_accuracy", "raysim_global_loss", "raysim_sparsity", "raysim_mask_churn",
                "raysim_workers", "raysim_worker_busy_ratio"}
    exp.on_round_end(record(1), None, None)
    exp.on_round_end(record(2, accuracy=None, sparsity=float("nan")), None, None)  # null / NaN: not measured
    assert not optional & names(scrape(exp.port))

    exp.on_round_end(record(3, accuracy=0.8125, loss=0.61, sparsity=0.5, mask_churn=0.02, workers=4,
                            busy_fraction=0.75), None, None)
    exp.on_round_end(record(4), None, None)  # an unevaluated round keeps the last evaluation
    s = scrape(exp.port)
    assert value(s, "raysim_global_accuracy") == 0.8125
    assert value(s, "raysim_global_loss") == pytest.approx(0.61)
    assert value(s, "raysim_sparsity") == 0.5
    assert value(s, "raysim_mask_churn") == pytest.approx(0.02)
    assert value(s, "raysim_workers") == 4
    assert value(s, "raysim_worker_busy_ratio") == 0.75


def test_a_port_in_use_is_a_config_error_naming_metrics_port(exporter):
    first = exporter()  # own registries: a second exporter in the process is fine...
    with pytest.raises(ConfigError, match=rf"metrics\.port {first.port}.*already in use"):
        exporter(port=first.port)  # ...but not on a taken port
    with pytest.raises(ConfigError, match="metrics.port"):
        PrometheusExporter(MetricsConfig(port=0, host="198.51.100.1"), experiment="e", algorithm="a", population=1)


def test_run_end_lingers_for_the_last_scrape_then_stops(exporter):
    exp = exporter(linger_s=0.6)
    exp.on_round_end(record(1), None, None)
    start = time.monotonic()
    ender = threading.Thread(target=exp.on_run_end, args=(None,))
    ender.start()
    assert value(scrape(exp.port), "raysim_rounds_completed_total") == 1  # still served while lingering
    ender.join(timeout=10)
    assert time.monotonic() - start >= 0.6
    assert refused(exp.port)
    exp.close()  # the caller's finally closes again: harmless


class _Gateway(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list] = []

    def do_PUT(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.received.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_run_end_pushes_the_final_values_to_the_pushgateway(exporter):
    _Gateway.received = []
    gateway = http.server.HTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    try:
        exp = exporter(pushgateway=f"127.0.0.1:{gateway.server_address[1]}")
        exp.on_round_end(record(1), None, None)
        exp.on_run_end(None)
    finally:
        gateway.shutdown()
        gateway.server_close()
    [(path, body)] = _Gateway.received
    assert path == "/metrics/job/raysim/experiment/exp1"
    assert 'raysim_rounds_completed_total{algorithm="autoflip",experiment="exp1"} 1.0' in body
    assert refused(exp.port)


def test_an_unreachable_pushgateway_warns_and_still_stops(exporter, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # bound, never listening: connection refused
        exp = exporter(pushgateway=f"127.0.0.1:{dead}")
        with caplog.at_level(logging.WARNING):
            exp.on_run_end(None)
    assert f"metrics.pushgateway 127.0.0.1:{dead}: push failed" in caplog.text
    assert refused(exp.port)


def test_a_failing_run_still_releases_the_metrics_port(small_config, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = small_config(metrics={"enabled": True, "port": port})
    run_dir = new_run(cfg, tmp_path / "runs")
    (run_dir / "rounds.parquet").mkdir()  # the round log cannot be written: round 1 fails
    with pytest.raises(OSError):
        execute(cfg, run_dir)
    again = PrometheusExporter(MetricsConfig(port=port), experiment="e", algorithm="a", population=1)
    again.close()


def test_ray_exports_worker_counters_under_these_names(ray_cluster):
    ray = ray_cluster
    from raysim.telemetry.ray_metrics import BUSY_SECONDS, CLIENT_UPDATES, EXPORTED_NAMES, WorkerMetrics

    node = ray.nodes()[0]
    port = node["MetricsExportPort"]

    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self):
            self.metrics = WorkerMetrics("w7")

        def run(self):
            self.metrics.record(3, 1.5)
            self.metrics.record(0, 0.0)  # an idle call: Ray's Counter.inc would reject 0
            self.metrics.record(2, 0.25)

    ray.get(Worker.remote().run.remote())
    want = {EXPORTED_NAMES[CLIENT_UPDATES]: 5.0, EXPORTED_NAMES[BUSY_SECONDS]: 1.75}
    deadline = time.monotonic() + 30
    got = {}
    while time.monotonic() < deadline and got != want:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        got = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name in want and s.labels.get("worker") == "w7"}
        time.sleep(0.25)
    assert got == want
    with pytest.raises(ValueError, match="must be >= 0"):
        WorkerMetrics("driver").record(-1, 0.0)
