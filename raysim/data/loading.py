"""From a DataConfig to a FederatedDataset: read (or generate), subsample, partition, hold out.

All randomness on the data side comes from the run seed's "data" streams, one
per stage, so the same seed gives the same
federation and changing, say, max_test_samples leaves the partition alone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from raysim.config import DataConfig
from raysim.data import partition
from raysim.data.cifar import load_cifar, num_cifar_classes
from raysim.data.federated import ArrayDataset, FederatedDataset
from raysim.data.idx import load_idx_dataset, num_idx_classes
from raysim.data.leaf import load_leaf
from raysim.data.synthetic import generate_synthetic
from raysim.engine.seeds import rng_for

DATA_DIR_ENV = "RAYSIM_DATA_DIR"
FASHION_MNIST_SYSTEM_PATH = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    input_kind: Literal["image", "vector", "sequence"]
    has_users: bool  # rows carry a user, so the natural partition applies
    needs_files: bool


DATASETS: dict[str, DatasetInfo] = {
    "synthetic": DatasetInfo("vector", has_users=True, needs_files=False),
    "mnist": DatasetInfo("image", has_users=False, needs_files=True),
    "fashion_mnist": DatasetInfo("image", has_users=False, needs_files=True),
    "emnist": DatasetInfo("image", has_users=False, needs_files=True),
    "cifar10": DatasetInfo("image", has_users=False, needs_files=True),
    "cifar100": DatasetInfo("image", has_users=False, needs_files=True),
    "femnist": DatasetInfo("image", has_users=True, needs_files=True),
    "shakespeare": DatasetInfo("sequence", has_users=True, needs_files=True),
}


class _Central(NamedTuple):
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    train_users: np.ndarray | None


def default_data_path(dataset: str) -> Path:
    """Fashion-MNIST: the system package's folder; the others: $RAYSIM_DATA_DIR/<dataset>,
    or ~/.cache/raysim/data/<dataset> when the variable is unset."""
    if dataset == "fashion_mnist":
        return FASHION_MNIST_SYSTEM_PATH
    base = os.environ.get(DATA_DIR_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "raysim" / "data") / dataset


def load_federated_dataset(cfg: DataConfig, seed: int) -> FederatedDataset:
    """The dataset of `cfg`, deterministic for `seed`.

    Synthetic data has cfg.num_clients users. The natural partition with num_clients below the
    user count keeps the users with the most training rows (ties: lower user index first); the
    other users' train rows are dropped, their test rows stay in the global test set.
    """
    info = DATASETS[cfg.dataset]
    if cfg.partition.scheme == "natural" and not info.has_users:
        allowed = ", ".join(name for name, i in DATASETS.items() if i.has_users)
        raise ValueError(
            f"data.partition.scheme='natural' needs a dataset with users ({allowed}); "
            f"data.dataset is {cfg.dataset!r}: use iid, dirichlet or classes"
        )
    generate_rng, train_rng, test_rng, partition_rng, holdout_rng = (rng_for(seed, "data", s) for s in range(5))
    central = _load_central(cfg, generate_rng)
    train, users = _subsample(central.train, central.train_users, cfg.max_train_samples, train_rng)
    test, _ = _subsample(central.test, None, cfg.max_test_samples, test_rng)
    parts = _partition(cfg, train, users, partition_rng)
    train, parts = _drop_unassigned(train, parts)
    return FederatedDataset.from_partition(
        cfg.dataset, train, test, central.num_classes, parts, cfg.holdout_fraction, holdout_rng
    )


def _load_central(cfg: DataConfig, rng: np.random.Generator) -> _Central:
    if cfg.dataset == "synthetic":
        data = generate_synthetic(cfg.synthetic, cfg.num_clients, rng)
        return _Central(data.train, data.test, data.num_classes, data.train_users)
    root = Path(cfg.path).expanduser() if cfg.path is not None else default_data_path(cfg.dataset)
    if cfg.dataset in ("mnist", "fashion_mnist", "emnist"):
        train, test = load_idx_dataset(root, cfg.dataset)
        return _Central(train, test, num_idx_classes(cfg.dataset), None)
    if cfg.dataset in ("cifar10", "cifar100"):
        train, test = load_cifar(root, cfg.dataset)
        return _Central(train, test, num_cifar_classes(cfg.dataset), None)
    data = load_leaf(root, cfg.dataset)
    return _Central(data.train, data.test, data.num_classes, data.train_users)


def _subsample(
    data: ArrayDataset, users: np.ndarray | None, limit: int | None, rng: np.random.Generator
) -> tuple[ArrayDataset, np.ndarray | None]:
    """A seeded random subset of `limit` rows (in their original order), not stratified."""
    if limit is None or limit >= len(data):
        return data, users
    rows = np.sort(rng.choice(len(data), size=limit, replace=False))
    return ArrayDataset(data.x[rows], data.y[rows]), (users[rows] if users is not None else None)


def _partition(
    cfg: DataConfig, train: ArrayDataset, users: np.ndarray | None, rng: np.random.Generator
) -> list[np.ndarray]:
    spec = cfg.partition
    if spec.scheme == "iid":
        return partition.iid(len(train), cfg.num_clients, rng)
    if spec.scheme == "dirichlet":
        return partition.dirichlet(train.y, cfg.num_clients, spec.alpha, rng, spec.min_samples)
    if spec.scheme == "classes":
        return partition.classes_per_client(train.y, cfg.num_clients, spec.classes_per_client, rng)
    return partition.natural(users, max_clients=cfg.num_clients)


def _drop_unassigned(train: ArrayDataset, parts: list[np.ndarray]) -> tuple[ArrayDataset, list[np.ndarray]]:
    """Keep only rows some client owns (the natural partition's dropped users, the labels a
    short classes split leaves out), so they stay out of memory and the object store."""
    sizes = [len(p) for p in parts]
    if sum(sizes) == len(train):
        return train, parts
    kept = np.concatenate(parts)
    starts = np.cumsum([0, *sizes[:-1]])
    renumbered = [np.arange(s, s + n, dtype=np.int64) for s, n in zip(starts, sizes)]
    return ArrayDataset(train.x[kept], train.y[kept]), renumbered
