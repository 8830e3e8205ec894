"""The federated dataset: global arrays once, clients as index ranges.

Client membership is stored CSR-style (one index array plus offsets) so a
population of 100,000 clients is two arrays, not 100,000 Python objects, and
the whole thing can live once in a shared object store. The engine reads a client's
rows through `client_train` / `client_holdout` only, so a dataset that makes them on demand
(raysim/data/synthetic_lazy.py) can stand in for this one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def canonical_strides(a: np.ndarray) -> np.ndarray:
    """`a` as a C-contiguous array with the strides numpy would give a fresh one.

    A length-1 axis may carry any stride (e.g. 0 after `a[:, None]`) and still count as
    contiguous; torch reads those strides to choose convolution kernels, so the same
    images could train differently depending on how they were loaded or shipped
    (an object-store round trip normalises them). Normalising here makes them one way."""
    a = np.ascontiguousarray(a)
    return a.reshape(-1).reshape(a.shape) if a.size else a


@dataclass(frozen=True)
class ArrayDataset:
    """Features and integer labels. x: float32 (images NCHW, vectors NF) or int64 token sequences."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        object.__setattr__(self, "x", canonical_strides(self.x))

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class FederatedDataset:
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    client_offsets: np.ndarray  # int64, num_clients + 1
    client_index: np.ndarray  # int64 rows of `train`, grouped by client
    holdout_counts: np.ndarray  # int64 per client: the last h rows of its slice are held out

    @property
    def num_clients(self) -> int:
        return len(self.client_offsets) - 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def _slice(self, client: int) -> np.ndarray:
        return self.client_index[self.client_offsets[client] : self.client_offsets[client + 1]]

    def client_train_rows(self, client: int) -> np.ndarray:
        rows = self._slice(client)
        return rows[: len(rows) - int(self.holdout_counts[client])]

    def client_holdout_rows(self, client: int) -> np.ndarray:
        rows = self._slice(client)
        return rows[len(rows) - int(self.holdout_counts[client]) :]

    def client_train(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """The client's training rows (x, y), copied out of the (possibly shared, read-only) arrays."""
        rows = self.client_train_rows(client)
        return self.train.x[rows], self.train.y[rows]

    def client_holdout(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.client_holdout_rows(client)
        return self.train.x[rows], self.train.y[rows]

    def example_inputs(self, n: int) -> np.ndarray:
        """The first `n` training rows (to build models and count their FLOPs)."""
        return self.train.x[:n]

    @property
    def shared_array(self) -> np.ndarray:
        """The largest array a worker maps from the object store (its zero-copy check)."""
        return self.train.x

    def client_train_sizes(self) -> np.ndarray:
        return np.diff(self.client_offsets) - self.holdout_counts

    @classmethod
    def from_partition(
        cls,
        train: ArrayDataset,
        test: ArrayDataset,
        num_classes: int,
        parts: list[np.ndarray],
        holdout_fraction: float,
        rng: np.random.Generator,
    ) -> "FederatedDataset":
        """Build from per-client row lists; each client's rows are shuffled, then a
        `holdout_fraction` tail (at least 1 row when the client has 2 or more) is held out."""
        if not parts:
            raise ValueError("a federation needs at least one client")
        shuffled, holdout = [], []
        for rows in parts:
            rows = rng.permutation(np.asarray(rows, dtype=np.int64))
            h = int(round(len(rows) * holdout_fraction)) if holdout_fraction > 0 else 0
            if holdout_fraction > 0 and len(rows) >= 2:
                h = min(max(h, 1), len(rows) - 1)
            shuffled.append(rows)
            holdout.append(h)
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in shuffled], out=offsets[1:])
        index = np.concatenate(shuffled) if shuffled else np.zeros(0, dtype=np.int64)
        return cls(train, test, num_classes, offsets, index, np.asarray(holdout, dtype=np.int64))
