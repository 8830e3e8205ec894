"""The extension examples run as a user runs them, on both backends, and each one's
plug-in is really the one used."""
import importlib
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysim.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def example(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(EXAMPLES))  # what `python examples/x.py` does for its own folder

    def load(name):
        return importlib.import_module(name)

    yield load
    for name in ("custom_model", "custom_dataset", "custom_strategy"):
        sys.modules.pop(name, None)


def _overrides(tmp_path, backend, *extra):
    return [f"backend.name={backend}", f"output.dir={tmp_path / backend}", "output.progress=false",
            "backend.num_workers=2", *extra]


@pytest.mark.parametrize("backend", ["inprocess", "ray"])
def test_custom_model_example(example, tmp_path, backend, fashion_mnist_dir, request):
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    result = example("custom_model").main(_overrides(tmp_path, backend, "rounds=3", f"data.path={fashion_mnist_dir}"))
    assert load_config(result.run_dir / "config.yaml").model.name == "custom_model:SmallCNN"
    assert result.summary["totals"]["clients_failed"] == 0 and result.summary["final_accuracy"] > 0.3


@pytest.mark.parametrize("backend", ["inprocess", "ray"])
def test_custom_dataset_example(example, tmp_path, backend, request):
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    result = example("custom_dataset").main(_overrides(tmp_path, backend))
    cfg = load_config(result.run_dir / "config.yaml")
    assert (cfg.data.dataset, cfg.data.partition.scheme) == ("custom_dataset:rings", "custom_dataset:arcs")
    assert result.summary["final_accuracy"] > 0.7  # two rings, learnable by the MLP; chance is 0.5


@pytest.mark.parametrize("backend", ["inprocess", "ray"])
def test_custom_strategy_example_caps_the_large_clients(example, tmp_path, backend, request):
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
    result = example("custom_strategy").main(_overrides(tmp_path, backend, "rounds=3", "algorithm.params.cap=60"))
    rows = pq.read_table(result.run_dir / "rounds.parquet").to_pylist()
    assert load_config(result.run_dir / "config.yaml").algorithm.name == "custom_strategy:CappedFedAvg"
    assert all(r["capped_clients"] >= 1 for r in rows)  # synthetic users hold 20 to 1000 rows: some exceed 60
    assert result.summary["totals"]["clients_failed"] == 0


def test_a_cap_above_every_client_is_fedavg_exactly(example, tmp_path):
    from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

    capped = example("custom_strategy").main(_overrides(tmp_path, "inprocess", "rounds=2", "algorithm.params.cap=100000"))
    import raysim
    cfg = dict(example("custom_strategy").CONFIG, algorithm={"name": "fedavg"}, rounds=2)
    plain = raysim.run(cfg, overrides=_overrides(tmp_path / "plain", "inprocess"))
    a, b = (load_checkpoint(latest_checkpoint(r.run_dir)).weights for r in (capped, plain))
    assert all(a[k].equal(b[k]) for k in a)
