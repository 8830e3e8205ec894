"""What benchmark E measures: the workloads, their configs, the targets.

The same client work four ways, round after round on the same sampled clients:
- floor: a plain sequential PyTorch loop in this process (load the global weights into a
  fresh optimizer's model, SGD over the client's rows, add its weighted delta, average),
  torch's default threads; a second reference;
- limit: the compute limit, one resident model and optimizer per core in its own process
  (engine_limit.py), timing only the SGD steps and weight copies: the headline reference;
- inprocess: the in-process backend (FedAvg, real payload encoding, FLOP and clock
  accounting, failure checks), one thread like a worker;
- ray: the Ray backend with one worker per core, tree-merged, clients one at a time;
- ray_vectorized: the same with backend.vectorize, each call's clients trained as one
  vmap'd computation (raysim/engine/vectorized.py); a round where any client fell back to
  one at a time is an error, so this way's numbers are the vectorised path's.
Round time covers client work and aggregation (the limit: its busiest process's SGD steps
and weight copies only); the first round of each way is a warm-up and is not counted
(model build, worker start, FLOP profiling).
"""
from __future__ import annotations

from pathlib import Path

from raysim.benchmarks.common import cores
from raysim.config import ExperimentConfig, config_from_dict

# name -> (what it stresses, config overrides); benchmarks.md's E1 and E2.
WORKLOADS = {
    "E1": ("overhead-bound: logistic regression, 1,000 clients (60 images each), 100 per round, 1 epoch",
           {"model": {"name": "logreg"}, "data": {"num_clients": 1000}, "clients": {"per_round": 100}}),
    "E2": ("compute-bound: TwoCNN (1.66 M parameters), 1,000 clients with 50 images each, 50 per round, batch 10",
           {"model": {"name": "twocnn"}, "data": {"num_clients": 1000, "max_train_samples": 50_000},
            "clients": {"per_round": 50}}),
}
TARGETS = {"E1": 0.85, "E2": 0.95}  # Ray's client updates/s / the limit's, at least (issue 14)
WAYS = ("floor", "limit", "inprocess", "ray", "ray_vectorized")
RAY_WAYS = ("ray", "ray_vectorized")  # the two paths the targets are judged on
DEFAULT_ROUNDS = 3  # measured rounds per way, after the warm-up


def workload_config(name: str, seed: int, data_path: Path | None) -> ExperimentConfig:
    tree = {
        "name": f"bench-engine-{name}", "seed": seed, "rounds": 1,
        "data": {"dataset": "fashion_mnist", "path": str(data_path) if data_path else None,
                 "partition": {"scheme": "iid"}, "holdout_fraction": 0.0},
        "clients": {"local_epochs": 1, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05}},
        "algorithm": {"name": "fedavg"},
        "devices": {"use_availability": False},
        "eval": {"clients": False},
        "backend": {"name": "ray", "num_workers": cores(), "num_cpus_per_worker": 1},
    }
    for key, value in WORKLOADS[name][1].items():
        tree[key] = tree.get(key, {}) | value
    return config_from_dict(tree, source=f"benchmark {name}")


def vectorized_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` with backend.vectorize on: the ray_vectorized way."""
    tree = cfg.model_dump(mode="json")
    tree["backend"]["vectorize"] = True
    return config_from_dict(tree, source="benchmark E (vectorised)")
