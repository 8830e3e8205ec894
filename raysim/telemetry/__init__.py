"""Run telemetry: the driver's Prometheus exporter (`prometheus`) and per-worker Ray
counters (`ray_metrics`, imported only from worker code since it needs Ray)."""
from raysim.telemetry.prometheus import PrometheusExporter

__all__ = ["PrometheusExporter"]
