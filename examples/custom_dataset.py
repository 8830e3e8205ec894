"""Bring your own data: a dataset loader and a partitioner of your own.

    python examples/custom_dataset.py
    python examples/custom_dataset.py backend.name=inprocess

A dataset plug-in is called with (cfg, rng) and returns
raysim.data.loading.CentralData(train, test, num_classes, train_users); a partitioner
is called with (labels, users, num_clients, spec, rng) and returns one array of
training-row indices per client. Here: two concentric rings, generated (no download),
split so that client k holds a contiguous arc of both rings (a feature skew no
label-based partitioner gives).
"""
from __future__ import annotations

import sys

import numpy as np

import raysim
from raysim.data.federated import ArrayDataset
from raysim.data.loading import CentralData


def rings(cfg, rng: np.random.Generator) -> CentralData:
    n = 1200
    angle = rng.uniform(0, 2 * np.pi, size=n)
    label = rng.integers(0, 2, size=n)
    radius = np.where(label == 1, 1.0, 0.5) + rng.normal(scale=0.08, size=n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype(np.float32)
    y = label.astype(np.int64)
    # Training rows sorted by angle, so the partitioner can cut arcs.
    order = np.argsort(angle[:1000], kind="stable")
    return CentralData(ArrayDataset(x[:1000][order], y[:1000][order]), ArrayDataset(x[1000:], y[1000:]), 2)


def arcs(labels, users, num_clients, spec, rng) -> list[np.ndarray]:
    """Rows are sorted by angle: client k gets the k-th contiguous arc."""
    return [part.astype(np.int64) for part in np.array_split(np.arange(len(labels)), num_clients)]


CONFIG = {
    "name": "custom-dataset", "rounds": 15,
    "data": {"num_clients": 10, "holdout_fraction": 0.1},
    "model": {"name": "mlp", "hidden": 32, "layers": 2},
    "clients": {"per_round": 5, "local_epochs": 2, "batch_size": 16, "optimizer": {"name": "sgd", "lr": 0.1,
                                                                                  "momentum": 0.5}},
    "eval": {"every": 5, "clients": False},
}


def main(overrides: list[str]) -> raysim.RunResult:
    import custom_dataset  # this file under its own name, so config.yaml can name its functions

    result = raysim.run(CONFIG, dataset=custom_dataset.rings, partitioner=custom_dataset.arcs, overrides=overrides)
    print(f"final accuracy {result.summary['final_accuracy']:.4f}; run folder {result.run_dir}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
