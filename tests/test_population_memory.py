"""The population's memory is estimated before anything is built, and a population that
cannot fit is refused at once, naming data.num_clients and how many clients would fit."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_data_readers import write_idx_set

from raysim.config import ConfigError, DataConfig, SyntheticConfig
from raysim.data import loading, population_memory
from raysim.data.population_memory import (
    MAX_CLIENTS,
    available_memory_bytes,
    check_population,
    estimate_partition,
    estimate_synthetic,
    expected_rows_per_user,
)
from raysim.data.synthetic import generate_synthetic

TINY = {"min_samples": 2, "max_samples": 2}  # two rows per user: the per-client costs dominate


@pytest.mark.parametrize("synthetic", [{}, {"mean_samples": 1.0, "min_samples": 10, "max_samples": 40},
                                       {"mean_samples": 6.0, "max_samples": 300}])
def test_expected_rows_per_user_matches_the_generator(synthetic):
    cfg = SyntheticConfig(dimension=1, num_classes=2, **synthetic)
    users = 20_000
    data = generate_synthetic(cfg, users, np.random.default_rng(0))
    rows_per_user = (len(data.train) + len(data.test)) / users
    expected = expected_rows_per_user(cfg)
    # floor() in the generator takes up to one row off each user; the rest is sampling error
    assert expected - 1 - 0.03 * expected <= rows_per_user <= expected + 0.03 * expected


_MEASURE = """
import json, sys
from raysim.benchmarks.scale_run import PeakRss
from raysim.config import DataConfig
from raysim.data.loading import load_federated_dataset
from raysim.devices import Population
cfg = DataConfig.model_validate(json.loads(sys.argv[1]))
with PeakRss(interval_s=0.001) as memory:
    dataset = load_federated_dataset(cfg, 0)
    Population.from_mix(dataset.num_clients, {"phone_low": 0.5, "laptop": 0.5}, 0).available(0, 0)
print(memory.peak - memory.start)
"""


@pytest.mark.parametrize("data", [
    {"num_clients": 1000, "partition": {"scheme": "natural"}},  # a block of user models dominates
    {"num_clients": 100_000, "partition": {"scheme": "natural"}, "synthetic": TINY},  # per-client arrays do
    {"num_clients": 20_000, "partition": {"scheme": "iid"}, "synthetic": {"max_samples": 60}},  # the rows do
], ids=["block", "clients", "rows"])
def test_estimate_is_at_or_above_the_measured_peak_and_close_to_it(data):
    _assert_estimate_bounds_the_peak(data, estimate_synthetic)


def _assert_estimate_bounds_the_peak(data: dict, estimator) -> int:
    """The build's peak, measured in a fresh interpreter (so freed memory of earlier tests cannot
    hide its growth), is at most the estimate and at least 1/1.6 of it; returns the estimate."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(data)], capture_output=True, text=True,
                          timeout=300, check=True)
    measured = int(proc.stdout.split()[-1])
    estimate = estimator(DataConfig.model_validate(data)).total_bytes
    assert measured <= estimate <= 1.6 * measured, (measured, estimate)
    return estimate


def test_refusal_names_the_setting_the_need_and_what_fits():
    cfg = DataConfig(num_clients=50_000, partition={"scheme": "natural"})
    estimate = estimate_synthetic(cfg)
    available = estimate.total_bytes // 3

    def for_clients(n):
        return estimate_synthetic(cfg.model_copy(update={"num_clients": n}))

    with pytest.raises(ConfigError) as excinfo:
        check_population(estimate, available, for_clients, cfg.num_clients, " with these data.synthetic settings")
    message = str(excinfo.value)
    fit = int(message.split("at most ")[1].split(" clients")[0].replace(",", ""))
    assert for_clients(fit).total_bytes <= available < for_clients(fit + 1).total_bytes
    assert message.startswith("data.num_clients=50,000: building this population needs about ")
    assert f"{estimate.total_bytes / 2**30:.1f} GiB" in message and "data rows" in message
    assert "partition index arrays" in message and "device profiles" in message
    assert "data.synthetic settings" in message and "docs/data-limits.md" in message and "\n" not in message
    check_population(estimate, estimate.total_bytes, for_clients, cfg.num_clients)  # exactly enough: accepted


def test_client_cap_is_refused_even_when_memory_would_do():
    cfg = DataConfig(num_clients=MAX_CLIENTS + 1, synthetic=TINY)
    estimate = estimate_synthetic(cfg)
    with pytest.raises(ConfigError, match=f"over raysim's limit of {MAX_CLIENTS:,} clients"):
        check_population(estimate, 10 * estimate.total_bytes, lambda n: estimate, cfg.num_clients)
    at_cap = estimate_synthetic(cfg.model_copy(update={"num_clients": MAX_CLIENTS}))
    check_population(at_cap, at_cap.total_bytes, lambda n: at_cap, MAX_CLIENTS)


def test_loader_refuses_before_generating_and_fast(monkeypatch):
    calls = []
    monkeypatch.setattr(loading, "generate_synthetic", lambda *args: calls.append(args))
    cfg = DataConfig(num_clients=10_000_000, partition={"scheme": "natural"})
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="data.num_clients=10,000,000: building this population needs"):
        loading.load_federated_dataset(cfg, seed=0)
    assert time.perf_counter() - start < 0.1
    assert not calls


def test_loaded_dataset_is_checked_before_partitioning(tmp_path, monkeypatch):
    write_idx_set(tmp_path, np.random.default_rng(0), n_train=40, n_test=10)
    cfg = DataConfig(dataset="mnist", path=tmp_path, num_clients=20)
    assert loading.load_federated_dataset(cfg, seed=0).num_clients == 20
    row_bytes = 28 * 28 * 4 + 8  # float32 image, int64 label
    enough_for_ten = estimate_partition(cfg, 40, row_bytes, 10).total_bytes
    monkeypatch.setattr(loading, "available_memory_bytes", lambda: enough_for_ten)
    with pytest.raises(ConfigError, match=r"^data.num_clients=20: building this population needs .* at most 10 clients"):
        loading.load_federated_dataset(cfg, seed=0)


def test_available_memory_honours_a_cgroup_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(population_memory.psutil, "virtual_memory", lambda: SimpleNamespace(available=2**32))
    assert available_memory_bytes(tmp_path / "no-cgroup") == 2**32
    (tmp_path / "memory.max").write_text(f"{2**30}\n")
    (tmp_path / "memory.current").write_text(f"{2**28}\n")
    assert available_memory_bytes(tmp_path) == 2**30 - 2**28  # a pod's limit, below the machine's memory
    (tmp_path / "memory.current").write_text(f"{2**31}\n")
    assert available_memory_bytes(tmp_path) == 0
    (tmp_path / "memory.max").write_text("max\n")
    assert available_memory_bytes(tmp_path) == 2**32


@pytest.mark.parametrize("overrides, pattern", [
    ([], r"building this population needs about [\d.]+ GiB .* at most [\d,]+ clients fit"),  # ~1 TiB of rows
    (["data.synthetic.min_samples=2", "data.synthetic.max_samples=2"],
     r"over raysim's limit of 1,000,000 clients .*; use at most 1,000,000"),
], ids=["default-rows", "tiny-clients"])
def test_ten_million_clients_through_the_cli(tmp_path, overrides, pattern):
    args = ["run", "--set", "data.num_clients=10000000", "--out", str(tmp_path), "--no-progress"]
    for override in overrides:
        args += ["--set", override]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "raysim.cli", *args], capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("raysim: error: data.num_clients=10,000,000: ") and re.search(pattern, lines[0])
    assert elapsed < 30  # interpreter and imports; the check itself takes microseconds


def test_documented_constants_match_the_code():
    doc = (Path(__file__).parent.parent / "docs" / "data-limits.md").read_text()
    assert f"{MAX_CLIENTS:,}" in doc and "PARTITION_BYTES_PER_CLIENT" in doc
    assert f"`MAX_LAZY_CLIENTS` = {population_memory.MAX_LAZY_CLIENTS:,}" in doc
    assert f"`LAZY_BYTES_PER_CLIENT` ({population_memory.LAZY_BYTES_PER_CLIENT}:" in doc


@pytest.mark.parametrize("data", [
    {"num_clients": 2_000_000, "partition": {"scheme": "natural"},
     "synthetic": {"resident": False, "mean_samples": 1.0, "min_samples": 10, "max_samples": 40}},  # per client
    {"num_clients": 5_000, "partition": {"scheme": "natural"},
     "synthetic": {"resident": False, "max_samples": 2000, "test_users": 5_000}},  # the test set
], ids=["clients", "test-set"])
def test_lazy_estimate_is_at_or_above_the_measured_peak_and_close_to_it(data):
    from raysim.data.population_memory import estimate_lazy_synthetic

    estimate = _assert_estimate_bounds_the_peak(data, estimate_lazy_synthetic)
    # Far below the resident estimate of the same population: no rows are held.
    resident = DataConfig.model_validate({**data, "synthetic": {**data["synthetic"], "resident": True}})
    assert estimate < estimate_synthetic(resident).total_bytes / 3
