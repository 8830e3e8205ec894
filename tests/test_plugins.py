"""A researcher's own model, dataset, partitioner, device profile and strategy, named by
import path in a config and run without editing raysim; the registries behind it."""
import sys
import textwrap

import pyarrow.parquet as pq
import pytest
import torch

from raysim.algorithms import ALGORITHMS
from raysim.config import ConfigError, load_config
from raysim.experiment import execute, new_run
from raysim.models import MODELS
from raysim.registry import Registry
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

MYLAB = {
    "__init__.py": "",
    "nets.py": """
        import math
        from torch import nn

        class SmallNet(nn.Module):
            def __init__(self, input_shape, num_classes, cfg):
                super().__init__()
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 7), nn.ReLU())
                self.head = nn.Linear(7, num_classes)

            def forward(self, x):
                return self.head(self.body(x))
    """,
    "data.py": """
        import numpy as np
        from raysim.data.federated import ArrayDataset
        from raysim.data.loading import CentralData

        def load(cfg, rng):
            x = rng.normal(size=(300, 5)).astype(np.float32)
            y = (x[:, 0] > 0).astype(np.int64)
            return CentralData(ArrayDataset(x[:240], y[:240]), ArrayDataset(x[240:], y[240:]), 2)

        def stripes(labels, users, num_clients, spec, rng):
            return [np.arange(k, len(labels), num_clients, dtype=np.int64) for k in range(num_clients)]
    """,
    "fl.py": """
        from raysim.algorithms.fedavg import FedAvg

        class HalfStep(FedAvg):
            '''FedAvg that applies half of the mean update and says so in the round log.'''
            def aggregate(self, state, plan, partial):
                if "delta" in partial.stats:
                    stat = partial.stats["delta"]
                    stat.total = {k: v / 2 for k, v in stat.total.items()}
                state, metrics = super().aggregate(state, plan, partial)
                return state, metrics | {"half_step": 1.0}
    """,
    "devices.py": """
        from raysim.devices import DeviceProfile
        WATCH = DeviceProfile("watch", flops_per_s=1e8, down_bps=1e6, up_bps=1e5, latency_s=0.5, availability=1.0)
    """,
}


@pytest.fixture
def mylab(tmp_path, monkeypatch):
    pkg = tmp_path / "src" / "mylab"
    pkg.mkdir(parents=True)
    for name, text in MYLAB.items():
        (pkg / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    _forget_mylab()
    yield pkg
    _forget_mylab()  # each test writes its own copy of the package


def _forget_mylab():
    for name in [m for m in sys.modules if m == "mylab" or m.startswith("mylab.")]:
        del sys.modules[name]


def _config(tmp_path, **sections):
    base = {
        "name": "mine", "seed": 1, "rounds": 2,
        "data": {"dataset": "mylab.data:load", "num_clients": 6, "partition": {"scheme": "mylab.data:stripes"}},
        "model": {"name": "mylab.nets:SmallNet"},
        "algorithm": {"name": "mylab.fl:HalfStep"},
        "clients": {"per_round": 3, "batch_size": 16, "local_epochs": 2, "optimizer": {"name": "sgd", "lr": 0.2}},
        "devices": {"mix": {"mylab.devices:WATCH": 1.0}, "use_availability": False},
        "eval": {"every": 1, "clients": False},
        "output": {"dir": str(tmp_path / "runs"), "progress": False},
        "backend": {"name": "inprocess"},
    } | sections
    path = tmp_path / "mine.yaml"
    import yaml
    path.write_text(yaml.safe_dump(base))
    return load_config(path)


def test_a_users_own_plugins_run_by_import_path(tmp_path, mylab):
    cfg = _config(tmp_path, rounds=4)
    run_dir = new_run(cfg)
    summary = execute(cfg, run_dir)
    rows = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert sorted(state.weights) == ["body.1.bias", "body.1.weight", "head.bias", "head.weight"]  # SmallNet
    assert state.weights["body.1.weight"].shape == (7, 5)  # the dataset's 5 features
    assert [r["half_step"] for r in rows] == [1.0] * 4  # the strategy ran
    assert all(r["clients_done"] == 3 for r in rows)
    from raysim.data.loading import load_federated_dataset
    ds = load_federated_dataset(cfg.data, cfg.seed)
    assert ds.client_train_sizes().tolist() == [40 - round(40 * 0.1)] * 6  # 240 rows in stripes, 10 % held out
    # Every client is a watch: each round lasts at least its 0.5 s latency (a laptop's is 0.03 s).
    assert all(r["sim_time_s"] > 0.5 for r in rows)
    assert summary["final_accuracy"] > 0.6  # the label is the sign of feature 0: learnable


def test_the_half_step_strategy_moves_half_as_far_as_fedavg(tmp_path, mylab):
    moved = {}
    for name in ("fedavg", "mylab.fl:HalfStep"):
        cfg = _config(tmp_path, rounds=1, algorithm={"name": name}, name=name.replace(":", "-"))
        run_dir = new_run(cfg)
        execute(cfg, run_dir)
        moved[name] = load_checkpoint(latest_checkpoint(run_dir)).weights
    import torch

    from raysim.data.loading import load_federated_dataset
    from raysim.experiment import model_factory
    ds = load_federated_dataset(cfg.data, cfg.seed)
    init = model_factory(cfg, ds.input_shape, ds.num_classes, torch.from_numpy(ds.train.x[:1]))(None).state_dict()
    for k, w in init.items():
        assert torch.allclose(moved["mylab.fl:HalfStep"][k] - w, (moved["fedavg"][k] - w) / 2, atol=1e-6)


@pytest.mark.parametrize("field,value,expected", [
    ("model", {"name": "mylab.nets:Missing"}, "model.name: 'mylab.nets:Missing': mylab.nets has no attribute Missing"),
    ("model", {"name": "nolab.nets:X"}, "cannot import nolab.nets (No module named 'nolab'); install it or put it on PYTHONPATH"),
    ("algorithm", {"name": "fedprocs"}, "algorithm.name: unknown algorithm 'fedprocs'; known: autoflip"),
    ("data", {"dataset": "imagenet"}, "data.dataset: unknown dataset 'imagenet'; known:"),
    ("devices", {"mix": {"watch": 1.0}}, "devices.mix: unknown device profile 'watch'; known: datacenter_gpu, iot, "
     "laptop, phone_high, phone_low, phone_mid, tablet, or an import path package.module:attribute"),
])
def test_a_name_that_does_not_resolve_fails_before_any_work_naming_the_field(tmp_path, mylab, field, value, expected):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, **{field: value})
    assert expected in str(err.value)


def test_a_plugin_that_returns_the_wrong_thing_is_named(tmp_path, mylab):
    (mylab / "bad.py").write_text("def model(shape, classes, cfg):\n    return 'not a module'\n")
    cfg = _config(tmp_path, model={"name": "mylab.bad:model"})
    with pytest.raises(ValueError, match="returned str, not a torch.nn.Module"):
        execute(cfg, new_run(cfg))


def test_registries_refuse_clashes_and_list_every_name():
    reg = Registry("widget", "widgets.name")
    reg.register("a", 1, colour="red")
    assert reg.get("a") == 1 and reg.info("a") == {"colour": "red"} and reg.names() == ["a"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    with pytest.raises(ValueError, match="reserved for import paths"):
        reg.register("x:y", 3)
    # Plug-ins outside raysim come in through the raysim.plugins entry point (autoflip's).
    assert {"fedavg", "autoflip", "hybrid_random", "prunefl", "feddst"} <= set(ALGORITHMS.names())
    assert ALGORITHMS.info("autoflip") == {"explores": True} and ALGORITHMS.info("fedavg") == {}
    assert MODELS.info("twocnn") == {"inputs": ("image",)}


def test_on_ray_the_users_package_is_shipped_to_the_workers_and_gives_the_same_run(tmp_path, mylab, ray_cluster):
    from raysim.experiment import plugin_import_paths, shipped_plugins
    from raysim.registry import local_packages

    cfg = _config(tmp_path, rounds=2)
    assert local_packages(plugin_import_paths(cfg)) == ["mylab"]  # not installed: its code travels with the task
    assert local_packages(["raysim.models:MODELS", "numpy:zeros"]) == []  # installed: the workers have them
    assert sorted(shipped_plugins(cfg)) == sorted(plugin_import_paths(cfg))
    runs = {}
    for backend in ("inprocess", "ray"):
        cfg = _config(tmp_path, rounds=2, name=backend, backend={"name": backend, "num_workers": 2})
        run_dir = new_run(cfg)
        execute(cfg, run_dir)
        runs[backend] = (load_checkpoint(latest_checkpoint(run_dir)).weights,
                         pq.read_table(run_dir / "rounds.parquet").to_pylist())
    (w_in, rows_in), (w_ray, rows_ray) = runs["inprocess"], runs["ray"]
    assert all(r["clients_failed"] == 0 and r["half_step"] == 1.0 for r in rows_ray)
    assert [r["accuracy"] for r in rows_ray] == pytest.approx([r["accuracy"] for r in rows_in])
    assert sorted(w_ray) == sorted(w_in) and all(torch.allclose(w_ray[k], w_in[k], atol=1e-6) for k in w_in)


def _api_config(tmp_path):
    return {"name": "api", "seed": 2, "rounds": 4,
            "data": {"dataset": "synthetic", "num_clients": 8, "partition": {"scheme": "natural"}},
            "clients": {"per_round": 4}, "eval": {"every": 1, "clients": False},
            "output": {"dir": str(tmp_path / "runs"), "progress": False, "checkpoint_every": 1000},
            "backend": {"name": "inprocess"}}


def test_the_python_api_takes_objects_and_writes_their_import_paths(tmp_path, mylab):
    from mylab.data import load, stripes
    from mylab.fl import HalfStep
    from mylab.nets import SmallNet

    import raysim

    result = raysim.run(_api_config(tmp_path), model=SmallNet, dataset=load, partitioner=stripes, algorithm=HalfStep,
                        overrides=["rounds=2", "data.num_clients=6"])
    assert result.run_dir.parent == tmp_path / "runs" and result.summary["rounds"] == 2
    written = load_config(result.run_dir / "config.yaml")  # what --resume and the workers read
    assert (written.model.name, written.data.dataset, written.data.partition.scheme, written.algorithm.name) == (
        "mylab.nets:SmallNet", "mylab.data:load", "mylab.data:stripes", "mylab.fl:HalfStep")
    with pytest.raises(ConfigError, match="top level of an importable module"):
        raysim.run(_api_config(tmp_path), model=lambda shape, classes, cfg: SmallNet(shape, classes, cfg))


def test_a_callback_sees_every_round_and_can_stop_the_run(tmp_path):
    import raysim

    class StopAtTwo(raysim.Callback):
        def __init__(self):
            self.seen = []

        def on_round_end(self, record, state, partial):
            assert isinstance(record, raysim.RoundRecord) and record.clients_done > 0
            self.seen.append((record.round, state.round, record.accuracy))
            return record.round == 2

    stopper = StopAtTwo()
    result = raysim.run(_api_config(tmp_path), callbacks=[stopper])
    assert [(r, s) for r, s, _ in stopper.seen] == [(1, 1), (2, 2)]
    assert result.summary["rounds"] == 2
    rows = pq.read_table(result.run_dir / "rounds.parquet").to_pylist()
    assert [r["round"] for r in rows] == [1, 2] and rows[-1]["accuracy"] == stopper.seen[-1][2]
    assert load_checkpoint(latest_checkpoint(result.run_dir)).round == 2  # the stop is checkpointed


@pytest.mark.parametrize("field,body,message", [
    ("model.name=mylab.bad:thing", "def thing(shape, classes, cfg):\n    return 'x'\n", "returned str, not a torch.nn.Module"),
    ("data.dataset=mylab.bad:thing", "def thing(cfg, rng):\n    return 1\n", "returned int, not raysim.data.loading"),
    ("algorithm.name=mylab.bad:thing", "def thing(cfg, f, e):\n    return 1\n", "built int, not a raysim.engine.api"),
])
def test_the_cli_names_a_plugin_that_breaks_its_contract_and_exits_2(tmp_path, mylab, capsys, field, body, message):
    from raysim.cli import main

    (mylab / "bad.py").write_text(body)
    rc = main(["run", "--set", field, "--set", "backend.name=inprocess", "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("raysim: error: ") and message in err and "Traceback" not in err
