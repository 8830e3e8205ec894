"""Prometheus metrics of a run, served over HTTP by the driver while it runs.

One series per (experiment, algorithm) and a few fixed outcome/phase values: never a
per-client label, so a run of a million clients costs Prometheus the same as ten.
"""
from __future__ import annotations

import errno
import logging
import math
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server

from raysim.config import ConfigError, MetricsConfig
from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial

log = logging.getLogger(__name__)

RUN_LABELS = ("experiment", "algorithm")
OUTCOMES = ("done", "dropped", "failed")
# 10 ms (a toy round) to 1 h (a large cohort on slow simulated devices).
ROUND_SECONDS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
PUSH_JOB = "raysim"


def _value(row: dict, key: str) -> float | None:
    """A round-log column, or None when it is absent, null or NaN (not measured this round)."""
    v = row.get(key)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


class PrometheusExporter(Callback):
    """Turns each round record into metrics; serves them on `metrics.host:metrics.port`
    (`port` holds the bound port, the real one when 0 was asked)."""

    def __init__(self, cfg: MetricsConfig, *, experiment: str, algorithm: str, population: int,
                 registry: CollectorRegistry | None = None):
        self.cfg = cfg
        self.experiment = experiment
        # Its own registry, not the process-global one: several exporters (tests, a
        # benchmark's consecutive runs) must not collide on metric names.
        self.registry = registry if registry is not None else CollectorRegistry()
        run = {"experiment": experiment, "algorithm": algorithm}
        r = self.registry

        def counter(name, doc, *extra):
            return Counter(name, doc, RUN_LABELS + extra, registry=r)

        def gauge(name, doc, *extra):
            return Gauge(name, doc, RUN_LABELS + extra, registry=r)

        def hist(name, doc):
            return Histogram(name, doc, RUN_LABELS, buckets=ROUND_SECONDS_BUCKETS, registry=r).labels(**run)

        # prometheus_client appends _total to counter names itself.
        self.rounds = counter("raysim_rounds_completed", "training rounds completed (not exploration)").labels(**run)
        self.round_clients = gauge("raysim_round_clients", "clients of the last round by outcome", "outcome")
        self.clients = counter("raysim_clients", "clients finished, by outcome and phase", "outcome", "phase")
        self.updates_per_s = gauge("raysim_client_updates_per_second",
                                   "clients done per wall-clock second in the last round").labels(**run)
        self.wall = hist("raysim_round_wall_seconds", "wall-clock seconds per training round")
        self.sim = hist("raysim_round_simulated_seconds", "simulated seconds per training round")
        self.bytes_down = counter("raysim_download_bytes", "bytes sent to clients", "phase")
        self.bytes_up = counter("raysim_upload_bytes", "bytes received from clients", "phase")
        self.flops_exec = counter("raysim_flops_executed", "training FLOPs clients executed", "phase")
        self.flops_eff = counter("raysim_flops_effective", "training FLOPs scaled by weight density", "phase")
        # Gauges set only from records that carry the field, so an unmeasured
        # quantity is an absent series, not a misleading 0.
        self.optional = {
            "accuracy": gauge("raysim_global_accuracy", "global test accuracy, 0..1, last evaluation"),
            "loss": gauge("raysim_global_loss", "global test loss, last evaluation"),
            "sparsity": gauge("raysim_sparsity", "share of pruned parameters"),
            "mask_churn": gauge("raysim_mask_churn", "1 - Jaccard of this round's mask with the previous"),
            "workers": gauge("raysim_workers", "worker pool size"),
            "busy_fraction": gauge("raysim_worker_busy_ratio", "share of the last round the worker pool was busy"),
        }
        gauge("raysim_population_clients", "clients in the population").labels(**run).set(population)
        self._run = run
        # Counters start at 0 for both phases so rate() and increase() see a start.
        for phase in ("train", "explore"):
            for outcome in OUTCOMES:
                self.clients.labels(**run, outcome=outcome, phase=phase)
            for c in (self.bytes_down, self.bytes_up, self.flops_exec, self.flops_eff):
                c.labels(**run, phase=phase)

        try:
            self._server, self._thread = start_http_server(cfg.port, addr=cfg.host, registry=self.registry)
        except OSError as exc:
            why = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise ConfigError(f"metrics.port {cfg.port} on metrics.host {cfg.host}: cannot serve Prometheus metrics "
                              f"({why}); choose another port, or 0 for any free one") from None
        self.port: int = self._server.server_address[1]

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        run, phase, row = self._run, record.phase, record.row()
        for outcome in OUTCOMES:
            self.clients.labels(**run, outcome=outcome, phase=phase).inc(row[f"clients_{outcome}"])
        self.bytes_down.labels(**run, phase=phase).inc(record.bytes_down)
        self.bytes_up.labels(**run, phase=phase).inc(record.bytes_up)
        self.flops_exec.labels(**run, phase=phase).inc(record.flops_executed)
        self.flops_eff.labels(**run, phase=phase).inc(record.flops_effective)
        for key, g in self.optional.items():
            v = _value(row, key)
            if v is not None:
                g.labels(**run).set(v)
        if phase != "train":
            return  # exploration is billed above but is not a round of the schedule
        self.rounds.inc()
        for outcome in ("sampled",) + OUTCOMES:
            self.round_clients.labels(**run, outcome=outcome).set(row[f"clients_{outcome}"])
        wall = record.wall_time_s
        self.wall.observe(wall)
        self.sim.observe(record.sim_time_s)
        self.updates_per_s.set(record.clients_done / wall if wall > 0 else 0.0)

    def on_run_end(self, state: ServerState) -> None:
        if self.cfg.pushgateway:
            try:
                push_to_gateway(self.cfg.pushgateway, job=PUSH_JOB, registry=self.registry,
                                grouping_key={"experiment": self.experiment})
            except OSError as exc:  # the run's results are on disk already; a lost push must not fail it
                log.warning("metrics.pushgateway %s: push failed: %s", self.cfg.pushgateway, exc)
        if self.cfg.linger_s and self._server is not None:
            time.sleep(self.cfg.linger_s)  # the last scrape must see the final values
        self.close()

    def close(self) -> None:
        """Stop serving; safe to call twice (run end, then the caller's `finally`)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None
