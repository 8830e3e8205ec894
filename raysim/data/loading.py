"""From a DataConfig to a FederatedDataset: read (or generate), subsample, partition, hold out.

All randomness on the data side comes from the run seed's "data" streams, one
per stage, so the same seed gives the same
federation and changing, say, max_test_samples leaves the partition alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from raysim.config import ConfigError, DataConfig
from raysim.data import partition
from raysim.data.cifar import load_cifar, num_cifar_classes
from raysim.data.federated import ArrayDataset, FederatedDataset
from raysim.data.idx import load_idx_dataset, num_idx_classes
from raysim.data.leaf import load_leaf
from raysim.data.population_memory import (
    MAX_LAZY_CLIENTS,
    available_memory_bytes,
    check_population,
    estimate_lazy_synthetic,
    estimate_partition,
    estimate_synthetic,
)
from raysim.data.synthetic import generate_synthetic
from raysim.data.synthetic_lazy import LazySyntheticDataset, build_lazy_synthetic
from raysim.engine.seeds import rng_for
from raysim.registry import Registry

DATA_DIR_ENV = "RAYSIM_DATA_DIR"
FASHION_MNIST_SYSTEM_PATH = Path("/usr/share/datasets/fashion-mnist")


class CentralData(NamedTuple):
    """What a dataset plug-in returns: the whole training and test sets, before any client
    split. `train_users[i]` is the user of training row i for datasets with users (the
    natural partition needs them), else None."""

    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    train_users: np.ndarray | None = None


DATASETS = Registry("dataset", "data.dataset")
"""Dataset plug-ins. Contract: `load(cfg: DataConfig, rng: numpy.random.Generator) ->
CentralData`, with `x` float32 (N, *input_shape) or int64 token ids, `y` int64 labels in
[0, num_classes). `rng` is the run seed's data stream, for datasets that are generated.
Registered with `inputs` (its input kind: "vector", "image" or "sequence") and `has_users`
so that configs that cannot work are refused before any work. A generated dataset may register
`estimate`: `(cfg) -> raysim.data.population_memory.PopulationEstimate`, so a population that
cannot fit in memory is refused before it is generated (every dataset is checked again once
loaded, before partitioning)."""


def _root(cfg: DataConfig) -> Path:
    return Path(cfg.path).expanduser() if cfg.path is not None else default_data_path(cfg.dataset)


def _synthetic(cfg: DataConfig, rng: np.random.Generator) -> CentralData:
    data = generate_synthetic(cfg.synthetic, cfg.num_clients, rng)
    return CentralData(data.train, data.test, data.num_classes, data.train_users)


def _idx(cfg: DataConfig, rng: np.random.Generator) -> CentralData:
    train, test = load_idx_dataset(_root(cfg), cfg.dataset)
    return CentralData(train, test, num_idx_classes(cfg.dataset))


def _cifar(cfg: DataConfig, rng: np.random.Generator) -> CentralData:
    train, test = load_cifar(_root(cfg), cfg.dataset)
    return CentralData(train, test, num_cifar_classes(cfg.dataset))


def _leaf(cfg: DataConfig, rng: np.random.Generator) -> CentralData:
    data = load_leaf(_root(cfg), cfg.dataset)
    return CentralData(data.train, data.test, data.num_classes, data.train_users)


DATASETS.register("synthetic", _synthetic, inputs="vector", has_users=True, estimate=estimate_synthetic)
for _name in ("mnist", "fashion_mnist", "emnist"):
    DATASETS.register(_name, _idx, inputs="image", has_users=False)
for _name in ("cifar10", "cifar100"):
    DATASETS.register(_name, _cifar, inputs="image", has_users=False)
DATASETS.register("femnist", _leaf, inputs="image", has_users=True)
DATASETS.register("shakespeare", _leaf, inputs="sequence", has_users=True)


def default_data_path(dataset: str) -> Path:
    """Fashion-MNIST: the system package's folder; the others: $RAYSIM_DATA_DIR/<dataset>,
    or ~/.cache/raysim/data/<dataset> when the variable is unset."""
    if dataset == "fashion_mnist":
        return FASHION_MNIST_SYSTEM_PATH
    base = os.environ.get(DATA_DIR_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "raysim" / "data") / dataset


def load_federated_dataset(cfg: DataConfig, seed: int) -> FederatedDataset | LazySyntheticDataset:
    """The dataset of `cfg`, deterministic for `seed`.

    Synthetic data has cfg.num_clients users. The natural partition with num_clients below the
    user count keeps the users with the most training rows (ties: lower user index first); the
    other users' train rows are dropped, their test rows stay in the global test set. With
    data.synthetic.resident=false no rows are made here (raysim/data/synthetic_lazy.py).
    """
    if cfg.dataset == "synthetic" and not cfg.synthetic.resident:
        def lazy_for(n: int):
            return estimate_lazy_synthetic(cfg.model_copy(update={"num_clients": n}))

        check_population(lazy_for(cfg.num_clients), available_memory_bytes(), lazy_for, cfg.num_clients,
                         " with these data.synthetic settings", max_clients=MAX_LAZY_CLIENTS)
        return build_lazy_synthetic(cfg, seed)
    generate_rng, train_rng, test_rng, partition_rng, holdout_rng = (rng_for(seed, "data", s) for s in range(5))
    # Known before any file is read for registered datasets; after loading for import-path ones.
    if DATASETS.info(cfg.dataset).get("has_users") is False:
        _check_users(cfg, None)
    _check_generated_size(cfg)
    central = _load_central(cfg, generate_rng)
    _check_users(cfg, central.train_users)
    _check_partition_size(cfg, central)
    train, users = _subsample(central.train, central.train_users, cfg.max_train_samples, train_rng)
    test, _ = _subsample(central.test, None, cfg.max_test_samples, test_rng)
    parts = _partition(cfg, train, users, partition_rng)
    train, parts = _drop_unassigned(train, parts)
    return FederatedDataset.from_partition(
        train, test, central.num_classes, parts, cfg.holdout_fraction, holdout_rng
    )


def _check_users(cfg: DataConfig, users: np.ndarray | None) -> None:
    if PARTITIONERS.info(cfg.partition.scheme).get("needs_users") and users is None:
        allowed = ", ".join(n for n in DATASETS.names() if DATASETS.info(n).get("has_users"))
        raise ValueError(
            f"data.partition.scheme={cfg.partition.scheme!r} needs a dataset with users ({allowed}); "
            f"data.dataset is {cfg.dataset!r}: use iid, dirichlet or classes"
        )


def _check_generated_size(cfg: DataConfig) -> None:
    estimate = DATASETS.info(cfg.dataset).get("estimate")
    if estimate is not None:
        def for_clients(n: int):
            return estimate(cfg.model_copy(update={"num_clients": n}))

        lazy = " (or data.synthetic.resident=false: no rows in memory)" if cfg.dataset == "synthetic" else ""
        check_population(estimate(cfg), available_memory_bytes(), for_clients, cfg.num_clients,
                         f" with these data.{cfg.dataset} settings", alternative=lazy)


def _check_partition_size(cfg: DataConfig, central: CentralData) -> None:
    train_rows = len(central.train)
    row_bytes = central.train.x.nbytes // max(train_rows, 1) + central.train.y.itemsize
    clients = min(cfg.num_clients, max(train_rows, 1))  # a partitioner gives every client a row or fails
    users = central.train_users
    if PARTITIONERS.info(cfg.partition.scheme).get("needs_users") and users is not None and len(users):
        # One client per user at most; users are numbered 0..U-1 by the built-in datasets,
        # so their span is their count (and an upper bound on it for any plug-in).
        clients = min(clients, int(users.max()) - int(users.min()) + 1)

    def for_clients(n: int):
        return estimate_partition(cfg, train_rows, row_bytes, n)

    check_population(for_clients(clients), available_memory_bytes(), for_clients, cfg.num_clients)


def _load_central(cfg: DataConfig, rng: np.random.Generator) -> CentralData:
    central = DATASETS.get(cfg.dataset)(cfg, rng)
    if not isinstance(central, CentralData):
        raise ConfigError(f"data.dataset={cfg.dataset!r} returned {type(central).__name__}, not "
                         "raysim.data.loading.CentralData(train, test, num_classes, train_users)")
    return central


def _subsample(
    data: ArrayDataset, users: np.ndarray | None, limit: int | None, rng: np.random.Generator
) -> tuple[ArrayDataset, np.ndarray | None]:
    """A seeded random subset of `limit` rows (in their original order), not stratified."""
    if limit is None or limit >= len(data):
        return data, users
    rows = np.sort(rng.choice(len(data), size=limit, replace=False))
    return ArrayDataset(data.x[rows], data.y[rows]), (users[rows] if users is not None else None)


PARTITIONERS = Registry("partitioner", "data.partition.scheme")
"""Partitioner plug-ins. Contract: `split(labels, users, num_clients, spec, rng) -> list of
int64 row-index arrays, one per client`, where `labels` are the training labels, `users`
each row's user (None for datasets without users), `spec` the PartitionConfig (alpha,
classes_per_client, min_samples) and `rng` the run seed's partition stream. Registered
with `needs_users=True` when it cannot work without users."""

PARTITIONERS.register("iid", lambda labels, users, n, spec, rng: partition.iid(len(labels), n, rng))
PARTITIONERS.register("dirichlet",
                      lambda labels, users, n, spec, rng: partition.dirichlet(labels, n, spec.alpha, rng,
                                                                              spec.min_samples))
PARTITIONERS.register("classes", lambda labels, users, n, spec, rng: partition.classes_per_client(
    labels, n, spec.classes_per_client, rng))
PARTITIONERS.register("natural", lambda labels, users, n, spec, rng: partition.natural(users, max_clients=n),
                      needs_users=True)


def _partition(
    cfg: DataConfig, train: ArrayDataset, users: np.ndarray | None, rng: np.random.Generator
) -> list[np.ndarray]:
    scheme = cfg.partition.scheme
    try:
        parts = PARTITIONERS.get(scheme)(train.y, users, cfg.num_clients, cfg.partition, rng)
    except ValueError as exc:  # a split the data cannot give (too few rows, more classes than labels)
        raise ConfigError(f"data.partition (scheme={scheme}, data.num_clients={cfg.num_clients}, "
                          f"{len(train)} training rows): {exc}") from None
    return _checked_parts(parts, len(train), scheme)


def _checked_parts(parts, n_rows: int, scheme: str) -> list[np.ndarray]:
    """A partitioner's output, checked against its contract: a non-empty list of integer
    row-index arrays, each row of the training set given to at most one client."""
    where = f"data.partition.scheme={scheme!r}"
    if not isinstance(parts, (list, tuple)) or not parts:
        raise ConfigError(f"{where} returned {type(parts).__name__}; a partitioner returns a non-empty list of "
                          "row-index arrays, one per client")
    out = [np.asarray(p) for p in parts]
    bad = next((i for i, p in enumerate(out) if p.ndim != 1 or (p.size and not np.issubdtype(p.dtype, np.integer))),
               None)
    if bad is not None:
        raise ConfigError(f"{where}: client {bad}'s rows are {out[bad].dtype} of shape {out[bad].shape}, not a 1-D "
                          "array of integer row indices")
    rows = np.concatenate(out).astype(np.int64, copy=False) if out else np.zeros(0, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise ConfigError(f"{where}: row indices must lie in [0, {n_rows}), got {rows.min()} to {rows.max()}")
    if np.unique(rows).size != rows.size:
        raise ConfigError(f"{where}: some rows are given to more than one client; each row may belong to one only")
    return [p.astype(np.int64, copy=False) for p in out]


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
