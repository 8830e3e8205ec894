"""Generates the raysim Grafana dashboards (dashboards/json/*.json) from code.

Why generated, and with grafana-foundation-sdk: the two dashboards hold some forty
panels that repeat one shape (a PromQL query filtered by the `experiment` variable,
one datasource, a unit, a legend); hand-kept JSON of that size drifts (duplicate panel
ids, overlapping gridPos, a datasource uid typed differently in one place). The
Grafana Foundation SDK is Grafana Labs' own maintained, typed builder library; its
model classes also load the JSON back, which tests/test_dashboards.py uses to check
the committed files. grafanalib (the older choice) has had no release since 2024-01.
The SDK's PyPI versions carry an epoch per build, so an unpinned requirement resolves
to its Grafana 10.1 build: the `dashboards` extra in pyproject.toml pins the 11.6 one.

The JSON is committed so that Grafana can provision it without Python; a test fails
when it differs from what this script writes. After changing this file:

    .venv/bin/python dashboards/generate.py          # rewrite dashboards/json/
    .venv/bin/python dashboards/generate.py --check  # exit 1 if the JSON is stale
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    stat,
    table,
    timeseries,
    xychart,
)
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import xychart as xm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from raysim.telemetry.ray_metrics import BUSY_SECONDS, CLIENT_UPDATES, EXPORTED_NAMES

HERE = Path(__file__).resolve().parent
JSON_DIR = HERE / "json"

# The provisioned datasource (provisioning/datasources/prometheus.yaml) declares this
# uid; every panel, query and variable names it, so a provisioned Grafana needs no
# import step. To use another Prometheus, change the url there, not the uid.
DATASOURCE_UID = "raysim-prometheus"
DS = dm.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)

SEL = 'experiment=~"$experiment"'  # every raysim series carries experiment and algorithm
WORKER_UPDATES = EXPORTED_NAMES[CLIENT_UPDATES]
WORKER_BUSY = EXPORTED_NAMES[BUSY_SECONDS]
LEGEND_RUN = "{{experiment}} {{algorithm}}"


def q(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False,
      table_format: bool = False) -> prom.Dataquery:
    query = prom.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        query = query.legend_format(legend)
    if instant:
        query = query.instant()
    else:
        query = query.range()
    if table_format:
        query = query.format(PromQueryFormat.TABLE)
    return query


def legend_table() -> common.VizLegendOptions:
    return (common.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"]))


def ts(title: str, desc: str, unit: str, *queries: prom.Dataquery, w: int = 12, h: int = 8,
       stack: bool = False, min_zero: bool = True) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(desc).datasource(DS).unit(unit)
             .span(w).height(h).legend(legend_table()).fill_opacity(10).line_width(1)
             .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    if min_zero:
        panel = panel.min(0)
    if stack:
        panel = panel.stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL)).fill_opacity(40)
    for query in queries:
        panel = panel.with_target(query)
    return panel


def st(title: str, desc: str, unit: str, query: prom.Dataquery, w: int = 6, h: int = 4,
       calc: str = "lastNotNull") -> stat.Panel:
    return (stat.Panel().title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
            .graph_mode(cm.BigValueGraphMode.AREA).color_mode(cm.BigValueColorMode.VALUE)
            .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
            .reduce_options(common.ReduceDataOptions().calcs([calc]).values(False))
            .with_target(query))


def merge_and_rename(names: dict[str, str]) -> list[dm.DataTransformerConfig]:
    """Join instant table-format queries on their labels into one row per run, name the
    value columns and drop the timestamp."""
    return [
        dm.DataTransformerConfig(id_val="merge", options={}),
        dm.DataTransformerConfig(id_val="organize", options={
            "excludeByName": {"Time": True},
            "renameByName": {f"Value #{ref}": name for ref, name in names.items()},
            "indexByName": {}}),
    ]


def quantiles(metric: str, what: str) -> list[prom.Dataquery]:
    return [q(f"histogram_quantile({p / 100}, sum by (experiment, algorithm, le) "
              f"(rate({metric}_bucket{{{SEL}}}[$__rate_interval])))",
              f"{LEGEND_RUN} p{p}", ref) for p, ref in ((50, "A"), (90, "B"), (99, "C"))] + [
        q(f"sum by (experiment, algorithm) (rate({metric}_sum{{{SEL}}}[$__rate_interval])) / "
          f"sum by (experiment, algorithm) (rate({metric}_count{{{SEL}}}[$__rate_interval]))",
          f"{LEGEND_RUN} mean {what}", "D")]


def experiment_variable() -> db.QueryVariable:
    return (db.QueryVariable("experiment").label("experiment").datasource(DS)
            .query({"qryType": 1, "query": "label_values(raysim_rounds_completed_total, experiment)",
                    "refId": "PrometheusVariableQueryEditor-VariableQuery"})
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))


def base(uid: str, title: str, desc: str, tags: list[str]) -> db.Dashboard:
    return (db.Dashboard(title).uid(uid).description(desc).tags(["raysim", *tags])
            .time("now-1h", "now").refresh("10s").timezone("browser").editable()
            .tooltip(dm.DashboardCursorSync.CROSSHAIR).with_variable(experiment_variable())
            # The annotation query every Grafana dashboard carries (Grafana expects annotations.list).
            .annotation(db.AnnotationQuery().name("Annotations & Alerts").type("dashboard").built_in(1)
                        .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                        .enable(True).hide(True).icon_color("rgba(0, 211, 255, 1)"))
            .link(db.DashboardLink("raysim").type(dm.DashboardLinkType.DASHBOARDS).tags(["raysim"])
                  .as_dropdown(False).include_vars(True).keep_time(True)))


def number_ids(board: dm.Dashboard) -> dm.Dashboard:
    """Panel ids in layout order, rows included: unique, and stable across runs."""
    for i, panel in enumerate(board.panels or [], start=1):
        panel.id_val = i
    return board


# --- Scalability -----------------------------------------------------------------

def scalability() -> dm.Dashboard:
    d = base("raysim-scalability", "raysim / Scalability",
             "How the simulator scales: clients per round, throughput, round time, the Ray "
             "worker pool and the object store, against the population size.", ["scalability"])

    d = (d.with_row(db.Row("Overview"))
         .with_panel(st("Population", "Clients in the population (raysim_population_clients), per experiment.",
                        "short", q(f"max by (experiment) (raysim_population_clients{{{SEL}}})", "{{experiment}}")))
         .with_panel(st("Rounds completed", "Training rounds finished so far (counter).", "short",
                        q(f"max by (experiment) (raysim_rounds_completed_total{{{SEL}}})", "{{experiment}}")))
         .with_panel(st("Client updates / s", "Client updates per wall-clock second in the last round.",
                        "ops", q(f"sum by (experiment) (raysim_client_updates_per_second{{{SEL}}})",
                                 "{{experiment}}")))
         .with_panel(st("Ray workers", "Size of the worker pool.", "short",
                        q(f"max by (experiment) (raysim_workers{{{SEL}}})", "{{experiment}}"))))

    d = (d.with_row(db.Row("Clients and throughput"))
         .with_panel(ts("Clients per round", "Last round's clients by outcome: sampled, done (included in "
                        "the aggregate), dropped (past the deadline), failed.", "short",
                        q(f"sum by (experiment, algorithm, outcome) (raysim_round_clients{{{SEL}}})",
                          "{{experiment}} {{algorithm}} {{outcome}}")))
         .with_panel(ts("Client updates per second", "Clients finished per wall-clock second, per round.",
                        "ops", q(f"sum by (experiment, algorithm) (raysim_client_updates_per_second{{{SEL}}})",
                                 LEGEND_RUN)))
         .with_panel(ts("Client outcomes rate by phase", "Clients per second by outcome and phase "
                        "(train, or AutoFLIP's exploration).", "ops",
                        q(f"sum by (experiment, algorithm, outcome, phase) (rate(raysim_clients_total{{{SEL}}}[$__rate_interval]))",
                          "{{experiment}} {{algorithm}} {{phase}} {{outcome}}"), stack=True))
         .with_panel(ts("Rounds per minute", "Training rounds completed per minute.", "short",
                        q(f"sum by (experiment, algorithm) (rate(raysim_rounds_completed_total{{{SEL}}}[$__rate_interval])) * 60",
                          LEGEND_RUN))))

    d = (d.with_row(db.Row("Round time"))
         .with_panel(ts("Round wall time (p50 / p90 / p99)", "Real seconds per round, from the "
                        "raysim_round_wall_seconds histogram; the mean is sum / count.", "s",
                        *quantiles("raysim_round_wall_seconds", "wall")))
         .with_panel(ts("Round simulated time (p50 / p90 / p99)", "Simulated seconds per round (the "
                        "slowest included client, or the deadline), from raysim_round_simulated_seconds.",
                        "s", *quantiles("raysim_round_simulated_seconds", "simulated"))))

    d = (d.with_row(db.Row("Ray worker pool"))
         .with_panel(ts("Pool size and busy ratio", "Workers in the pool (left) and the fraction of "
                        "worker time spent running clients in the last round (right, 0-1).", "short",
                        q(f"max by (experiment, algorithm) (raysim_workers{{{SEL}}})", f"{LEGEND_RUN} workers", "A"),
                        q(f"avg by (experiment, algorithm) (raysim_worker_busy_ratio{{{SEL}}})", f"{LEGEND_RUN} busy ratio", "B"))
                     .override_by_query("B", [dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                                              dm.DynamicConfigValue(id_val="unit", value="percentunit"),
                                              dm.DynamicConfigValue(id_val="max", value=1)]))
         .with_panel(ts("Client updates per worker", "Client updates per second on each Ray worker, "
                        "from the workers' own counters (exported by each node's Ray metrics agent; "
                        "no experiment label).", "ops",
                        q(f"sum by (worker) (rate({WORKER_UPDATES}[$__rate_interval]))", "{{worker}}")))
         .with_panel(ts("Busy fraction per worker", "Seconds each Ray worker spent running clients per "
                        "second (1 = always busy).", "percentunit",
                        q(f"sum by (worker) (rate({WORKER_BUSY}[$__rate_interval]))", "{{worker}}")))
         .with_panel(ts("Object store memory", "Ray's own metrics, per node: used and available object store "
                        "memory, and memory by location (shared memory, spilled, worker heap).", "bytes",
                        q("sum by (NodeAddress) (ray_object_store_used_memory)", "{{NodeAddress}} used", "A"),
                        q("sum by (NodeAddress) (ray_object_store_available_memory)", "{{NodeAddress}} available", "B"),
                        q("sum by (NodeAddress, Location) (ray_object_store_memory)",
                          "{{NodeAddress}} {{Location}}", "C"))))

    per_run = {
        "A": ("population", f"max by (experiment, algorithm) (last_over_time(raysim_population_clients{{{SEL}}}[$__range]))"),
        "B": ("workers", f"max by (experiment, algorithm) (last_over_time(raysim_workers{{{SEL}}}[$__range]))"),
        "C": ("updates/s (mean)", f"avg by (experiment, algorithm) (avg_over_time(raysim_client_updates_per_second{{{SEL}}}[$__range]))"),
        "D": ("round wall p90 (s)", ("histogram_quantile(0.9, sum by (experiment, algorithm, le) "
                                    f"(increase(raysim_round_wall_seconds_bucket{{{SEL}}}[$__range])))")),
        "E": ("sampled / round", ("avg by (experiment, algorithm) "
                                 f'(avg_over_time(raysim_round_clients{{{SEL}, outcome="sampled"}}[$__range]))')),
        "F": ("rounds", f"max by (experiment, algorithm) (max_over_time(raysim_rounds_completed_total{{{SEL}}}[$__range]))"),
    }
    table_queries = [q(expr, ref=ref, instant=True, table_format=True) for ref, (_, expr) in per_run.items()]
    names = {ref: name for ref, (name, _) in per_run.items()}

    runs_table = (table.Panel().title("Runs against population size").datasource(DS).span(14).height(9)
                  .description("One row per run in the time range: population, pool size, mean client "
                               "updates per second, p90 round wall time over the range, clients sampled "
                               "per round, rounds. Sort by population to read the scaling.")
                  .transformations(merge_and_rename(names))
                  .sort_by([common.TableSortByFieldState().display_name("population").desc(False)]))
    for query in table_queries:
        runs_table = runs_table.with_target(query)

    xy_names = {"A": "population", "C": "updates/s (mean)"}
    scatter = (xychart.Panel().title("Throughput against population").datasource(DS).span(10).height(9)
               .description("Each point is a run: mean client updates per second (y) against the "
                            "population size (x).")
               .transformations(merge_and_rename(xy_names)).show(xm.XYShowMode.POINTS)
               .point_size(xychart.XychartFieldConfigPointSize().fixed(8))
               .mapping(xm.SeriesMapping.MANUAL)
               .series([xychart.XYSeriesConfig()
                        .frame(xychart.XychartXYSeriesConfigFrame().matcher(
                            xychart.MatcherConfig().id("byIndex").options(0)))
                        .x(xychart.XychartXYSeriesConfigX().matcher(
                            xychart.MatcherConfig().id("byName").options("population")))
                        .y(xychart.XychartXYSeriesConfigY().matcher(
                            xychart.MatcherConfig().id("byName").options("updates/s (mean)")))]))
    for ref in xy_names:
        scatter = scatter.with_target(q(per_run[ref][1], ref=ref, instant=True, table_format=True))

    d = d.with_row(db.Row("Against population size")).with_panel(runs_table).with_panel(scatter)
    return number_ids(d.build())


# --- Savings ---------------------------------------------------------------------

COSTS = (  # metric, title, unit
    ("raysim_flops_executed_total", "Executed FLOPs", "short"),
    ("raysim_flops_effective_total", "Effective FLOPs", "short"),
    ("raysim_download_bytes_total", "Bytes down", "decbytes"),
    ("raysim_upload_bytes_total", "Bytes up", "decbytes"),
)


NOT_FEDAVG = ', algorithm!="fedavg"'
FEDAVG = ', algorithm="fedavg"'


def final(metric: str, extra: str = "") -> str:
    """A counter's total per run at the end of the range, summed over its phases (the
    run may have ended: max_over_time still sees it)."""
    return f"sum by (experiment, algorithm) (max_over_time({metric}{{{SEL}{extra}}}[$__range]))"


def vs_fedavg(metric: str) -> str:
    """Mean per-run total of each algorithm over FedAvg's mean, across the selected runs
    (the benchmark names runs per method, so no label but `algorithm` is shared)."""
    return f"avg by (algorithm) ({final(metric, NOT_FEDAVG)}) / on() group_left() avg({final(metric, FEDAVG)})"


def last_gauge(metric: str, extra: str = "") -> str:
    """A gauge's final value in the range, averaged over the selected runs per algorithm."""
    return f"avg by (algorithm) (last_over_time({metric}{{{SEL}{extra}}}[$__range]))"


def gauge_vs_fedavg(metric: str, op: str) -> str:
    return f"{last_gauge(metric, NOT_FEDAVG)} {op} on() group_left() avg(last_over_time({metric}{{{SEL}{FEDAVG}}}[$__range]))"


def savings() -> dm.Dashboard:
    d = base("raysim-savings", "raysim / Savings",
             "What pruning saves: cumulative executed and effective FLOPs and bytes per algorithm "
             "(exploration included, and shown on its own), model quality, sparsity, and AutoFLIP "
             "against FedAvg where both ran.", ["savings", "autoflip"])

    d = d.with_row(db.Row("Cumulative cost per run (all phases)"))
    for metric, title, unit in COSTS:
        d = d.with_panel(ts(f"{title} (cumulative)", f"{title} so far, train and exploration phases "
                            f"summed ({metric}).", unit,
                            q(f"sum by (experiment, algorithm) ({metric}{{{SEL}}})", LEGEND_RUN), w=6))

    d = d.with_row(db.Row("Cost by phase"))
    for metric, title, unit in COSTS:
        d = d.with_panel(
            bargauge.Panel().title(f"{title} by phase").datasource(DS).unit(unit).span(6).height(8)
            .description(f"Each run's total in the time range, split into the exploration phase "
                         f"(AutoFLIP's round 0) and training ({metric}).")
            .display_mode(cm.BarGaugeDisplayMode.GRADIENT).orientation(cm.VizOrientation.HORIZONTAL)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .with_target(q(f"sum by (experiment, algorithm, phase) (max_over_time({metric}{{{SEL}}}[$__range]))",
                           "{{experiment}} {{algorithm}} {{phase}}", instant=True)))
    d = d.with_panel(ts("Exploration phase cost", "The exploration phase on its own: executed and "
                        "effective FLOPs (left) and bytes (right).", "short",
                        q(f'sum by (experiment, algorithm) (raysim_flops_executed_total{{{SEL}, phase="explore"}})',
                          "{{experiment}} {{algorithm}} executed FLOPs", "A"),
                        q(f'sum by (experiment, algorithm) (raysim_flops_effective_total{{{SEL}, phase="explore"}})',
                          "{{experiment}} {{algorithm}} effective FLOPs", "B"),
                        q(f'sum by (experiment, algorithm) (raysim_download_bytes_total{{{SEL}, phase="explore"}})',
                          "{{experiment}} {{algorithm}} bytes down", "C"),
                        q(f'sum by (experiment, algorithm) (raysim_upload_bytes_total{{{SEL}, phase="explore"}})',
                          "{{experiment}} {{algorithm}} bytes up", "D"), w=24)
                     .override_by_regexp(".*bytes.*", [
                         dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                         dm.DynamicConfigValue(id_val="unit", value="decbytes")]))

    d = d.with_row(db.Row("AutoFLIP against FedAvg"))
    for metric, title, _ in COSTS:
        d = d.with_panel(
            st(f"{title} vs FedAvg", "Mean per-run total of each algorithm divided by FedAvg's, over "
               "the selected runs and time range (below 1 = saved). Empty without a FedAvg run.",
               "percentunit", q(vs_fedavg(metric), "{{algorithm}}", instant=True)))
    d = (d.with_panel(st("Accuracy vs FedAvg", "Final global accuracy of each algorithm minus FedAvg's "
                         "(mean over the selected runs; percentage points).", "percentunit",
                         q(gauge_vs_fedavg("raysim_global_accuracy", "-"), "{{algorithm}}", instant=True), w=12))
         .with_panel(st("Loss vs FedAvg", "Final global loss of each algorithm over FedAvg's.", "percentunit",
                        q(gauge_vs_fedavg("raysim_global_loss", "/"), "{{algorithm}}", instant=True), w=12)))

    d = (d.with_row(db.Row("Model quality and masks"))
         .with_panel(ts("Global accuracy", "Server model accuracy on the test set, per run.", "percentunit",
                        q(f"max by (experiment, algorithm) (raysim_global_accuracy{{{SEL}}})", LEGEND_RUN)))
         .with_panel(ts("Global loss", "Server model loss on the test set, per run.", "short",
                        q(f"max by (experiment, algorithm) (raysim_global_loss{{{SEL}}})", LEGEND_RUN)))
         .with_panel(ts("Sparsity", "Fraction of weights pruned (pruning methods only).", "percentunit",
                        q(f"max by (experiment, algorithm) (raysim_sparsity{{{SEL}}})", LEGEND_RUN)))
         .with_panel(ts("Mask churn", "Fraction of mask entries that changed in the last round.",
                        "percentunit", q(f"max by (experiment, algorithm) (raysim_mask_churn{{{SEL}}})", LEGEND_RUN))))
    return number_ids(d.build())


DASHBOARDS: dict[str, Callable[[], dm.Dashboard]] = {
    "raysim-scalability.json": scalability,
    "raysim-savings.json": savings,
}


def render(build: Callable[[], dm.Dashboard]) -> str:
    return json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if dashboards/json/ is not up to date")
    args = parser.parse_args(argv)
    stale = []
    JSON_DIR.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        path, text = JSON_DIR / name, render(build)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run: .venv/bin/python dashboards/generate.py", file=sys.stderr)
        return 1
    for name in stale:
        print(f"wrote {JSON_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
