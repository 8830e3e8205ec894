"""LEAF's Synthetic(alpha, beta) without resident rows (`data.synthetic.resident: false`).

The driver and the object store hold two small integers per client (its row count and its
held-out count: 8 bytes a client, 8 MB for a million) and a bounded global test set; a
client's rows are generated where it runs, from a stream keyed by the run seed and the
client id (numpy SeedSequence(data seed, spawn_key=(client,))), so the same client gives
the same rows in any process, on any backend, in any round.

The model is the resident generator's (raysim/data/synthetic.py): user k draws
u_k ~ N(0, alpha), B_k ~ N(0, beta), W_k ~ N(u_k, 1) (dimension x classes),
b_k ~ N(u_k, 1), v_k ~ N(B_k, 1), rows x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2 and
labels y = argmax(W_k x + b_k); its row count is the same clipped log-normal draw, from
the same stream (so user k has as many rows as in the resident dataset of the same seed).
The rows themselves differ from the resident dataset's: they come from the client's stream.

A user's rows, in order: its training rows, of which the last `holdout` are held out for
client-side evaluation, then its test rows (test_fraction of them, as in the resident
dataset). One client per user (the natural partition). The global test set is the test
rows of `test_users` users drawn once from the population by the seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raysim.config import ConfigError, DataConfig, SyntheticConfig
from raysim.data.federated import ArrayDataset
from raysim.data.synthetic import rows_for_test, user_row_counts
from raysim.engine.seeds import derive_seed, rng_for

# The run seed's data streams (raysim/data/loading.py uses 0-4; 0 draws the row counts, as
# in the resident dataset, and 2 subsamples the test set).
_COUNTS_STREAM, _TEST_SUBSAMPLE_STREAM, _CLIENT_STREAM, _TEST_USERS_STREAM = 0, 2, 5, 6


def holdout_counts_for(train_rows: np.ndarray, fraction: float) -> np.ndarray:
    """FederatedDataset.from_partition's rule, vectorised: round(n * fraction) held out, at
    least 1 and at most n - 1 for a client of 2 rows or more; none when fraction is 0."""
    if fraction <= 0:
        return np.zeros(len(train_rows), dtype=np.int32)
    h = np.round(train_rows * fraction).astype(np.int64)
    h = np.where(train_rows >= 2, np.clip(h, 1, train_rows - 1), h)
    return h.astype(np.int32)


@dataclass(frozen=True)
class LazySyntheticDataset:
    """The FederatedDataset interface the engine uses (client_train, client_holdout,
    client_train_sizes, holdout_counts, test, example_inputs), with rows made on demand."""

    cfg: SyntheticConfig
    client_seed: int  # root of every client's stream
    row_counts: np.ndarray  # int32 per client: all its rows (train, held out, test)
    holdout_counts: np.ndarray  # int32 per client
    test: ArrayDataset

    @property
    def num_clients(self) -> int:
        return len(self.row_counts)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.cfg.dimension,)

    @property
    def shared_array(self) -> np.ndarray:
        """The largest array a worker maps from the object store (its zero-copy check)."""
        return self.row_counts

    def _train_rows(self, client: int) -> int:
        """rows_for_test's rule on one count, in scalar arithmetic (a client's hot path)."""
        count = int(self.row_counts[client])
        return count - min(max(round(count * self.cfg.test_fraction), 1), count - 1)

    def client_train_sizes(self) -> np.ndarray:
        counts = self.row_counts.astype(np.int64)
        return counts - rows_for_test(counts, self.cfg.test_fraction) - self.holdout_counts

    def user_rows(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        """All of user `client`'s rows (x float32, y int64), from its own stream."""
        if not 0 <= client < self.num_clients:
            raise IndexError(f"client {client} outside the population of {self.num_clients}")
        cfg, n = self.cfg, int(self.row_counts[client])
        rng = np.random.default_rng(np.random.SeedSequence(self.client_seed, spawn_key=(client,)))
        model_mean = np.float32(rng.normal(0.0, cfg.alpha))
        feature_mean = np.float32(rng.normal(0.0, cfg.beta))
        weights = model_mean + rng.standard_normal((cfg.dimension, cfg.num_classes), dtype=np.float32)
        bias = model_mean + rng.standard_normal(cfg.num_classes, dtype=np.float32)
        center = feature_mean + rng.standard_normal(cfg.dimension, dtype=np.float32)
        scale = np.arange(1, cfg.dimension + 1, dtype=np.float32) ** -0.6  # sqrt(j^-1.2)
        x = center + scale * rng.standard_normal((n, cfg.dimension), dtype=np.float32)
        return x, (x @ weights + bias).argmax(axis=1).astype(np.int64)

    def client_train(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.user_rows(client)
        end = self._train_rows(client) - int(self.holdout_counts[client])
        return x[:end], y[:end]

    def client_holdout(self, client: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.user_rows(client)
        end = self._train_rows(client)
        start = end - int(self.holdout_counts[client])
        return x[start:end], y[start:end]

    def example_inputs(self, n: int) -> np.ndarray:
        """The first `n` training rows of client 0 (to build models and count their FLOPs)."""
        return self.client_train(0)[0][:n]


def build_lazy_synthetic(cfg: DataConfig, seed: int) -> LazySyntheticDataset:
    """cfg.num_clients users, one client each; only their row counts are drawn here."""
    if cfg.partition.scheme != "natural":
        raise ConfigError(f"data.synthetic.resident=false gives one client per user: set data.partition.scheme="
                          f"natural (it is {cfg.partition.scheme!r}), or data.synthetic.resident=true")
    if cfg.max_train_samples is not None:
        raise ConfigError("data.max_train_samples subsamples resident rows; with data.synthetic.resident=false "
                          "lower data.num_clients instead, or remove data.max_train_samples")
    syn = cfg.synthetic
    counts = user_row_counts(syn, cfg.num_clients, rng_for(seed, "data", _COUNTS_STREAM))
    train_rows = counts - rows_for_test(counts, syn.test_fraction)
    holdout = holdout_counts_for(train_rows, cfg.holdout_fraction)
    dataset = LazySyntheticDataset(syn, derive_seed(seed, "data", _CLIENT_STREAM), counts.astype(np.int32), holdout,
                                   ArrayDataset(np.zeros((0, syn.dimension), np.float32), np.zeros(0, np.int64)))
    test = _test_set(dataset, cfg, seed)
    return LazySyntheticDataset(dataset.cfg, dataset.client_seed, dataset.row_counts, holdout, test)


def _test_set(dataset: LazySyntheticDataset, cfg: DataConfig, seed: int) -> ArrayDataset:
    """The test rows of `test_users` users (sorted), then subsampled to max_test_samples."""
    n_users = min(cfg.synthetic.test_users, dataset.num_clients)
    users = np.sort(rng_for(seed, "data", _TEST_USERS_STREAM).choice(dataset.num_clients, n_users, replace=False))
    xs, ys = [], []
    for user in users:
        x, y = dataset.user_rows(int(user))
        start = dataset._train_rows(int(user))
        xs.append(x[start:].copy())  # a copy: a view would keep the user's training rows alive too
        ys.append(y[start:].copy())
    x, y = np.concatenate(xs), np.concatenate(ys)
    limit = cfg.max_test_samples
    if limit is not None and limit < len(y):
        rows = np.sort(rng_for(seed, "data", _TEST_SUBSAMPLE_STREAM).choice(len(y), size=limit, replace=False))
        x, y = x[rows], y[rows]
    return ArrayDataset(x, y)
