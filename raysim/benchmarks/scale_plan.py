"""What benchmark C measures: round time and the driver's peak memory as the cohort grows.

Population: 1,000,000 LEAF-Synthetic clients (about 10 training rows each) whose rows are
not resident: each client's rows are generated on the worker that runs it, from the
client's own seed (data.synthetic.resident=false, raysim/data/synthetic_lazy.py), so the
driver and the object store hold two counts per client. Scenarios:
- logreg at 10,000 and 100,000 clients per round (the 60 s round target);
- a 6.6 MB MLP (1.65 M parameters) at 250 / 1,000 / 2,000 clients per round.
Every (scenario, cohort) point runs in a fresh driver process with its own local Ray,
so each peak is that cohort's alone (raysim/benchmarks/scale_run.py). A stretch point sets
up 10,000,000 clients and samples a cohort from them, without training (time and memory
reported, no target).
"""
from __future__ import annotations

from raysim.benchmarks.common import cores
from raysim.config import ExperimentConfig, config_from_dict

POPULATION = 1_000_000
STRETCH_POPULATION = 10_000_000  # set-up and sampling only
SCENARIOS = {
    "logreg": ({"name": "logreg"}, (10_000, 100_000)),
    "mlp-6.6MB": ({"name": "mlp", "hidden": 1250, "layers": 2}, (250, 1_000, 2_000)),
}
ROUND_TARGET_S, ROUND_TARGET_COHORT = 60.0, 100_000  # a 100,000-client logreg round
MEMORY_GROWTH_TARGET = 0.20  # driver peak, smallest to largest cohort
SETUP_TARGET_S, SETUP_TARGET_BYTES = 60.0, 4 * 2**30
DEFAULT_ROUNDS = 2  # measured rounds per point, after the warm-up
# Models trained vectorised (backend.vectorize: each call's clients as one vmap'd computation):
# small ones, where per-step overhead, not arithmetic, bounds a client; the MLP trains one at a time.
VECTORIZED_MODELS = frozenset({"logreg"})


def scenario_config(model: dict, population: int, cohort: int, seed: int) -> ExperimentConfig:
    return config_from_dict({
        "name": "bench-scale", "seed": seed, "rounds": 1,
        "data": {"dataset": "synthetic", "num_clients": population, "partition": {"scheme": "natural"},
                 "holdout_fraction": 0.0,
                 "synthetic": {"mean_samples": 1.0, "min_samples": 10, "max_samples": 40, "resident": False}},
        "model": model,
        "clients": {"per_round": cohort, "local_epochs": 1, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05}},
        "algorithm": {"name": "fedavg"},
        "devices": {"use_availability": False},
        "eval": {"clients": False},
        "backend": {"name": "ray", "num_workers": cores(), "num_cpus_per_worker": 1,
                    "vectorize": model["name"] in VECTORIZED_MODELS},
    }, source="benchmark C")
