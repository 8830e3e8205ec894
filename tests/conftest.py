import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ray_head import ray_head  # noqa: F401  (a fixture: a private, token-authenticated Ray head)
from raysim.config import config_from_dict

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# The shared experiment is deliberately not the defaults, so every test that builds on it
# runs the harder case: clients of unequal size (the synthetic federation's 12 users hold
# 14 to 720 training rows), several local epochs, client-side momentum, a decaying client
# learning rate, and server momentum with a server learning rate other than 1. A mistake
# that only shows away from the defaults (an epochs factor dropped, momentum lost on
# resume, equal client weights) then changes the numbers these tests see.
HARD_CASE = {
    "clients": {"per_round": 4, "local_epochs": 2, "batch_size": 16, "lr_decay": 0.9,
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.5}},
    "algorithm": {"server_lr": 0.8, "server_momentum": 0.5},
}


@pytest.fixture
def small_config(tmp_path):
    """A seconds-long synthetic experiment (see HARD_CASE); pass nested dicts to change fields."""

    def make(**extra):
        base = {
            "name": "t", "seed": 3, "rounds": 3,
            "data": {"dataset": "synthetic", "num_clients": 12, "partition": {"scheme": "natural"}},
            "model": {"name": "logreg"},
            **HARD_CASE,
            "eval": {"every": 1, "max_clients": 5},
            "output": {"dir": str(tmp_path / "runs"), "progress": False},
            "backend": {"name": "inprocess"},
        }
        return config_from_dict(_merge(base, extra))

    return make


@pytest.fixture
def fashion_mnist_dir() -> Path:
    """The real dataset; only a developer machine without the package may skip, never CI."""
    if not FMNIST.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{FMNIST} missing in CI: .ci/run must apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FMNIST


def write_leaf(folder: Path, split: str, name: str, users: dict[str, tuple[list, list]]):
    (folder / split).mkdir(parents=True, exist_ok=True)
    tree = {
        "users": list(users),
        "num_samples": [len(y) for _, y in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }
    (folder / split / name).write_text(json.dumps(tree))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole pytest run: 2 CPUs (this machine's cores) and
    2 declared fake GPUs, so fractional GPU placement is testable without a GPU."""
    import ray

    if not ray.is_initialized():
        # Metrics reported every 0.5 s instead of Ray's 10 s keep metric tests at seconds.
        ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING",
                 _system_config={"metrics_report_interval_ms": 500})
    yield ray
    ray.shutdown()


@dataclass
class Round:
    """One planned round with everything needed to run it by hand."""

    cfg: object
    dataset: object
    population: object
    algorithm: object
    runner: object
    state: object
    plan: object

    def client_rows(self, client: int):
        rows = self.dataset.client_train_rows(client)
        return torch.from_numpy(self.dataset.train.x[rows]), torch.from_numpy(self.dataset.train.y[rows])


def plan_round(cfg, round_idx: int, clients: list[int], masks: dict | None = None) -> Round:
    """A FedAvg round of `cfg`, planned from the initial weights; with `masks`, the weights are
    masked and the broadcast carries the mask, as a pruning layer's would."""
    from dataclasses import replace

    from autoflip.pruned import with_masks
    from raysim.data.loading import load_federated_dataset
    from raysim.devices import Population
    from raysim.experiment import build_runner

    ds = load_federated_dataset(cfg.data, cfg.seed)
    pop = Population.from_mix(ds.num_clients, cfg.devices.mix, 0)
    runner = build_runner(cfg, pop, ds)
    state = runner.algorithm.init_state(runner.model_factory(None).state_dict())
    plan = runner.algorithm.configure_round(state, round_idx, clients)
    if masks:
        state = with_masks(state, masks)
        broadcast = replace(plan.broadcast, weights=state.weights, masks=masks)
        broadcast.payload_bytes = runner.algorithm.download_bytes(broadcast)
        plan = replace(plan, broadcast=broadcast)
    return Round(cfg, ds, pop, runner.algorithm, runner, state, plan)


def algorithm_parts(cfg):
    """(dataset, model factory, algorithm, runner on laptops) for `cfg`, built as a run builds them."""
    from raysim.algorithms import build_algorithm
    from raysim.data.loading import load_federated_dataset
    from raysim.devices import Population
    from raysim.engine.runner import ClientRunner
    from raysim.experiment import model_factory

    ds = load_federated_dataset(cfg.data, cfg.seed)
    example = torch.from_numpy(ds.train.x[:1])
    factory = model_factory(cfg, ds.input_shape, ds.num_classes, example)
    algo = build_algorithm(cfg, factory, example)
    return ds, factory, algo, ClientRunner(algo, ds, Population.from_mix(ds.num_clients, {"laptop": 1}, 0), factory)


def explored(cfg):
    """algorithm_parts plus the state after the algorithm's set-up phase (if it has one)."""
    ds, factory, algo, runner = algorithm_parts(cfg)
    state = algo.init_state(factory(None).state_dict())
    setup = algo.setup_plan(state, ds.num_clients)
    if setup is not None:
        state, _ = algo.finish_setup(state, setup, runner.run(setup.tasks, setup.broadcast))
    return ds, factory, algo, runner, state


# Mixed slow and fast devices, so simulated times differ by client.
MIXED_DEVICES = {"mix": {"phone_low": 0.5, "laptop": 0.5}, "use_availability": False}


@pytest.fixture
def masked_round(small_config):
    """Round 2 (0-based 1) of the hard-case experiment on mixed devices, with 60 % of the
    classifier's weights masked out: the download carries the mask, the upload only kept
    entries, so the two differ in size. Six clients of unequal size."""
    cfg = small_config(devices=MIXED_DEVICES)
    mask = torch.zeros(10 * 60, dtype=torch.bool)
    mask[torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(0))[:240]] = True
    return plan_round(cfg, 1, [0, 1, 2, 3, 4, 10], {"classifier.weight": mask.reshape(10, 60)})


def crashed_run(cfg, monkeypatch, crash_round: int) -> Path:
    """A new run of `cfg` killed (KeyboardInterrupt, as a Ctrl-C or a lost driver would end
    it) while evaluating after round `crash_round`; its folder, ready for --resume."""
    from raysim.engine.loop import Evaluator
    from raysim.experiment import execute, new_run

    run_dir = new_run(cfg)
    original = Evaluator.__call__

    def crash(self, state):
        if state.round == crash_round:
            raise KeyboardInterrupt("simulated crash")
        return original(self, state)

    monkeypatch.setattr(Evaluator, "__call__", crash)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, run_dir)
    monkeypatch.setattr(Evaluator, "__call__", original)
    return run_dir


def assert_committed_result_renders(folder: str, stem: str, markdown) -> None:
    """docs/results/<folder>/<stem>.md is what <stem>.json renders to, and the README shows its table as it is."""
    root = Path(__file__).parent.parent
    result = json.loads((root / "docs" / "results" / folder / f"{stem}.json").read_text())
    md = (root / "docs" / "results" / folder / f"{stem}.md").read_text()
    assert md == markdown(result)
    table = "\n".join(line for line in md.splitlines() if line.startswith("|"))
    assert table in (root / "README.md").read_text()
