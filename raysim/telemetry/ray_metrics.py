"""Per-worker counters for use inside Ray worker actors, exported by each node's Ray
metrics agent (not by the driver's exporter). Ray is imported lazily: this module is
only imported from worker code, and the algorithm code never imports Ray."""
from __future__ import annotations

CLIENT_UPDATES = "raysim_worker_client_updates"
BUSY_SECONDS = "raysim_worker_busy_seconds"

# The names Prometheus sees for the two counters: Ray prefixes `ray_` and, as a
# Prometheus counter, suffixes `_total`, with the labels `worker` plus Ray's own
# (Component, NodeAddress, SessionName, Version, WorkerId, ...). Verified on Ray 2.60
# (OpenTelemetry metrics, the default) by incrementing from an actor in a local
# `ray.init(_metrics_export_port=...)` and scraping that node's metrics endpoint;
# tests/test_prometheus_exporter.py::test_ray_exports_worker_counters_under_these_names
# repeats that check.
EXPORTED_NAMES = {
    CLIENT_UPDATES: "ray_raysim_worker_client_updates_total",
    BUSY_SECONDS: "ray_raysim_worker_busy_seconds_total",
}


class WorkerMetrics:
    """Clients a worker ran and seconds it spent running them, tagged by worker only
    (never by client: one series per client would blow up Prometheus)."""

    def __init__(self, worker: str):
        from ray.util.metrics import Counter

        tags = {"worker": worker}
        self._updates = Counter(CLIENT_UPDATES, "clients this worker ran", tag_keys=("worker",)).set_default_tags(tags)
        self._busy = Counter(BUSY_SECONDS, "seconds this worker spent running clients",
                             tag_keys=("worker",)).set_default_tags(tags)

    def record(self, clients: int, busy_s: float) -> None:
        # Ray's Counter.inc rejects 0 (and negatives); an idle call has nothing to add.
        if clients < 0 or busy_s < 0:
            raise ValueError(f"WorkerMetrics.record: clients ({clients}) and busy_s ({busy_s}) must be >= 0")
        if clients:
            self._updates.inc(clients)
        if busy_s:
            self._busy.inc(busy_s)
