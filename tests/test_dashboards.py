"""The Grafana dashboards (dashboards/): the committed JSON is what the generator writes,
loads as Grafana Foundation SDK dashboard models, lays out on the grid, and every PromQL
query parses and names only metrics that really exist: those a real PrometheusExporter
serves, the Ray worker counters' exported names, and Ray's own metrics scraped from a
live Ray node. The provisioning files point Grafana at that JSON and that datasource."""
import importlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from raysim.config import MetricsConfig
from raysim.engine.record import Evaluation, RoundRecord
from raysim.telemetry.prometheus import PrometheusExporter
from raysim.telemetry.ray_metrics import EXPORTED_NAMES


def _extra(module: str):
    """The `dashboards` extra: CI installs it, so there a missing one is an error."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason="pip install -e '.[dashboards]'")


promql_parser = _extra("promql_parser")
_extra("grafana_foundation_sdk")
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

ROOT = Path(__file__).resolve().parents[1]
DASH = ROOT / "dashboards"
DATASOURCES = DASH / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = DASH / "provisioning" / "dashboards" / "raysim.yaml"

# Grafana's own interval macros, which stand where PromQL needs a duration.
GRAFANA_DURATIONS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}
GRAFANA_BUILTINS = {name[1:] for name in GRAFANA_DURATIONS}


def _load_generator():
    spec = importlib.util.spec_from_file_location("raysim_dashboards_generate", DASH / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generator()


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((DASH / "json").glob("*.json"))}


def panels(board: dict):
    """Every panel, those nested in collapsed rows included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(board: dict):
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel, target


# --- The checker: which metric names a PromQL query references ---------------------

def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric name, {label: (operator, value)}) of every series selector in a Grafana
    PromQL query, from a real PromQL parser's syntax tree, so function names, label
    names, `by`/`on` lists, strings and durations are never taken for metrics. Raises
    ValueError for a query that does not parse or selects no exact metric name."""
    for macro, duration in GRAFANA_DURATIONS.items():
        expr = expr.replace(macro, duration)
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name: (str(m.op), m.value) for m in node.matchers.matchers}
            name = node.name
            if not name:  # {__name__="x"} names a metric all the same; a regex is not checkable
                op, name = labels.get("__name__", (None, None))
                if op != str(promql_parser.MatchOp.Equal):
                    raise ValueError(f"selector without one exact metric name: {node}")
            found.append((name, labels))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr)}


def unknown_metrics(boards: dict[str, dict], known: set[str]) -> dict[str, set[str]]:
    """{"<dashboard> / <panel> / <refId>": names not in `known`} for every query."""
    bad = {}
    for name, board in boards.items():
        for panel, target in queries(board):
            missing = metric_names(target["expr"]) - known
            if missing:
                bad[f"{name} / {panel['title']} / {target['refId']}"] = missing
    return bad


# --- The metrics that really exist ---------------------------------------------------

def _record(round_no: int, phase: str, pool=None, **counts) -> RoundRecord:
    """A round record as the engine builds it, with wall time, the pool, the algorithm's
    metrics and an evaluation."""
    fields = {"clients_sampled": 10, "clients_done": 8, "clients_dropped": 1, "clients_failed": 1,
              "train_loss": 0.7, "flops_executed": 3.2e10, "flops_effective": 1.4e10, "bytes_down": 6_500_000,
              "bytes_up": 2_100_000, "client_train_wall_s": 1.2, "sim_time_s": 41.5} | counts
    return RoundRecord(round_no, phase, **fields, wall_time_s=1.8, pool=pool or {},
                       metrics={"sparsity": 0.55, "mask_churn": 0.04}, evaluation=Evaluation(0.71, 0.83))


@pytest.fixture(scope="module")
def exporter_families() -> dict[str, set[str]]:
    """{metric family: its sample names} a real exporter serves after an exploration and a
    training round carrying every optional field (a histogram's samples are its _bucket,
    _sum, _count and _created series)."""
    registry = CollectorRegistry()
    exporter = PrometheusExporter(MetricsConfig(port=0), experiment="dash", algorithm="autoflip",
                                  population=500, registry=registry)
    try:
        explore = _record(0, "explore", clients_dropped=0, clients_failed=0, clients_done=10)
        train = _record(1, "train", pool={"workers": 2.0, "busy_fraction": 0.85})
        # Every gauge the exporter sets only when a record carries its field.
        assert set(exporter.optional) <= set(train.row()), set(exporter.optional) - set(train.row())
        exporter.on_round_end(explore, None, None)
        exporter.on_round_end(train, None, None)
    finally:
        exporter.close()
    families = {family.name: {s.name for s in family.samples} for family in registry.collect()}
    # Both phases were really exported, so phase-filtered panels have series to show.
    phases = {s.labels.get("phase") for family in registry.collect() for s in family.samples}
    assert {"explore", "train"} <= phases
    return families


@pytest.fixture(scope="module")
def exporter_names(exporter_families) -> set[str]:
    return set().union(*exporter_families.values())


def _ray_names_in_dashboards() -> set[str]:
    worker = set(EXPORTED_NAMES.values())
    return {n for board in dashboards().values() for _, t in queries(board)
            for n in metric_names(t["expr"]) if n.startswith("ray_") and n not in worker}


@pytest.fixture(scope="module")
def ray_node_names(ray_cluster) -> set[str]:
    """Metric names a live Ray node's metrics endpoint serves, after some object store and
    task activity (some of Ray's metrics appear only then)."""
    ray = ray_cluster
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    held = ray.put(bytes(4 << 20))  # object store usage

    @ray.remote(num_cpus=0)
    def touch(blob):
        return len(blob)

    assert ray.get(touch.remote(held)) == 4 << 20
    wanted = _ray_names_in_dashboards()
    names: set[str] = set()
    deadline = time.monotonic() + 60  # Ray reports on an interval (10 s by default)
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        if wanted <= names:
            break
        time.sleep(1)
    del held
    return names


@pytest.fixture(scope="module")
def known_metrics(exporter_names, ray_node_names) -> set[str]:
    return exporter_names | set(EXPORTED_NAMES.values()) | ray_node_names


# --- Tests ---------------------------------------------------------------------------

def test_committed_json_is_what_the_generator_writes():
    committed = {p.name for p in (DASH / "json").glob("*.json")}
    assert committed == set(generate.DASHBOARDS), "stale or stray files in dashboards/json/"
    for name, build in generate.DASHBOARDS.items():
        assert (DASH / "json" / name).read_text() == generate.render(build), (
            f"dashboards/json/{name} is stale: run .venv/bin/python dashboards/generate.py")
    assert generate.main(["--check"]) == 0


def test_every_dashboard_loads_as_a_grafana_dashboard_model():
    boards = dashboards()
    assert len(boards) == 2
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        model = Dashboard.from_json(board)
        # The SDK decodes what it knows: a field it dropped or changed would show here.
        assert json.loads(json.dumps(model, cls=JSONEncoder)) == board, name
        assert model.title and model.uid and 1 <= len(model.uid) <= 40
        assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36

        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids), name
        cells: dict[tuple[int, int], int] = {}
        for panel in panels(board):
            pos = panel["gridPos"]
            assert all(isinstance(pos[k], int) for k in "hwxy") and pos["h"] > 0 and pos["w"] > 0
            assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, (name, panel["title"])
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{name}: panels {cells[(x, y)]} and {panel['id']} overlap"
                    cells[(x, y)] = panel["id"]
            if panel["type"] == "row":
                continue
            assert panel["title"] and panel["targets"], (name, panel["id"])
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), (name, panel["title"])
            for target in panel["targets"]:
                assert target["expr"].strip(), (name, panel["title"])


def test_every_query_and_variable_uses_the_provisioned_datasource():
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(provisioned) == 1 and provisioned[0]["type"] == "prometheus"
    want = {"type": "prometheus", "uid": provisioned[0]["uid"]}
    for name, board in dashboards().items():
        for panel in panels(board):
            if panel["type"] != "row":
                assert panel["datasource"] == want, (name, panel["title"])
        for _, target in queries(board):
            assert target["datasource"] == want, (name, target["expr"])
        for variable in board["templating"]["list"]:
            assert variable["datasource"] == want, (name, variable["name"])


def test_the_experiment_variable_lists_experiments_and_every_query_uses_defined_variables():
    for name, board in dashboards().items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        experiment = variables["experiment"]
        assert experiment["type"] == "query" and experiment["includeAll"] and experiment["multi"]
        match = re.fullmatch(r"label_values\((\w+), experiment\)", experiment["query"]["query"])
        assert match, experiment["query"]
        assert metric_names(match.group(1)) == {"raysim_rounds_completed_total"}
        for panel, target in queries(board):
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= set(variables) | GRAFANA_BUILTINS, (name, panel["title"], used)
            for metric, labels in selectors(target["expr"]):
                if metric.startswith("raysim_"):  # raysim series carry `experiment`: follow the choice
                    assert labels.get("experiment") == (str(promql_parser.MatchOp.Re), "$experiment"), (
                        name, panel["title"], target["expr"])


def test_every_query_parses_and_names_only_metrics_that_exist(known_metrics):
    boards = dashboards()
    referenced = {n for b in boards.values() for _, t in queries(b) for n in metric_names(t["expr"])}
    # Ray's own metrics were really scraped, not merely absent from the check.
    assert any(n.startswith("ray_object_store_") for n in referenced & known_metrics)
    assert unknown_metrics(boards, known_metrics) == {}


def test_the_dashboards_show_every_metric_the_exporter_serves(exporter_families):
    referenced = {n for b in dashboards().values() for _, t in queries(b) for n in metric_names(t["expr"])}
    assert len(exporter_families) >= 17
    for family, samples in exporter_families.items():
        served = samples - {family + "_created"}
        assert served & referenced, f"{family} is on no dashboard (served as {sorted(served)})"


def test_the_checker_rejects_a_misspelt_metric(known_metrics):
    board = dashboards()["raysim-scalability.json"]
    panel = next(p for p, t in queries(board) if "raysim_round_wall_seconds_bucket" in t["expr"])
    assert unknown_metrics({"s": board}, known_metrics) == {}
    misspelt = json.loads(json.dumps(board))
    for t in next(p for p in misspelt["panels"] if p["id"] == panel["id"])["targets"]:
        t["expr"] = t["expr"].replace("raysim_round_wall_seconds_bucket", "raysim_round_wall_second_bucket")
    assert unknown_metrics({"s": misspelt}, known_metrics) == {
        f"s / {panel['title']} / {t['refId']}": {"raysim_round_wall_second_bucket"}
        for t in panel["targets"] if "raysim_round_wall_seconds_bucket" in t["expr"]}

    # Only metric names count: functions, label names and values, by/on lists, durations.
    expr = ('histogram_quantile(0.9, sum by (le, experiment) (rate(raysim_round_wall_seconds_bucket'
            '{experiment=~"$experiment", phase="raysim_nonexistent"}[$__rate_interval]))) '
            '/ on() group_left() sum(raysim_workers offset 5m)')
    assert metric_names(expr) == {"raysim_round_wall_seconds_bucket", "raysim_workers"}
    assert metric_names('{__name__="raysim_workerz", experiment="e"}') == {"raysim_workerz"}
    for broken in ('sum(raysim_workers', 'rate(raysim_workers[5 m])', '{__name__=~"raysim_.*"}'):
        with pytest.raises(ValueError):
            metric_names(broken)


def _docker_mounts(readme: Path) -> dict[str, str]:
    """{host path relative to the repository root: container path} of the `-v` options
    of the README's `docker run ... grafana/grafana` command."""
    text = re.sub(r"\\\n\s*", " ", readme.read_text())
    commands = [line for line in text.splitlines() if "docker run" in line and "grafana/grafana" in line]
    assert len(commands) == 1, commands
    args = shlex.split(commands[0].replace('"$PWD/', '"./'))
    mounts = {}
    for flag, value in itertools.pairwise(args):
        if flag in ("-v", "--volume"):
            host, container = value.split(":")[:2]
            mounts[host.removeprefix("./")] = container
    return mounts


def test_provisioning_points_grafana_at_the_dashboards_as_the_readme_runs_it():
    mounts = _docker_mounts(DASH / "README.md")
    assert mounts["dashboards/provisioning"] == "/etc/grafana/provisioning"
    for host in mounts:  # every mounted host path is in the repository
        assert (ROOT / host).exists(), host
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    json_host = next(host for host, container in mounts.items() if container == provider["options"]["path"])
    assert sorted(p.name for p in (ROOT / json_host).glob("*.json")) == sorted(generate.DASHBOARDS)

    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["uid"] == generate.DATASOURCE_UID and source["access"] == "proxy"
    assert re.fullmatch(r"https?://[\w.-]+:\d+", source["url"]), source["url"]
    # $__rate_interval is derived from the scrape interval Grafana is told.
    scrape = yaml.safe_load((DASH / "prometheus.yml").read_text())["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape
