import json
import os
from pathlib import Path

import pytest

from ray_head import ray_head  # noqa: F401  (a fixture: a private, token-authenticated Ray head)
from raysim.config import config_from_dict

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def small_config(tmp_path):
    """A seconds-long synthetic experiment; pass nested dicts to change fields."""

    def make(**extra):
        base = {
            "name": "t", "seed": 3, "rounds": 3,
            "data": {"dataset": "synthetic", "num_clients": 12, "partition": {"scheme": "natural"}},
            "model": {"name": "logreg"},
            "clients": {"per_round": 4, "local_epochs": 1, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
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
