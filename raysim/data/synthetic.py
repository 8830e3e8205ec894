"""LEAF's Synthetic(alpha, beta) (Li et al., FedProx; LEAF data/synthetic), generated in-process.

Each user k draws u_k ~ N(0, alpha) and B_k ~ N(0, beta); its model is
W_k ~ N(u_k, 1), b_k ~ N(u_k, 1), its features x ~ N(v_k, Sigma) with
v_k ~ N(B_k, 1) and Sigma_jj = j^-1.2, and its labels y = argmax(W_k x + b_k)
(softmax is monotone, so the argmax is the same). alpha controls how much the
users' models differ, beta how much their features do. As in LEAF's code,
alpha and beta are standard deviations.
"""
from __future__ import annotations

import numpy as np

from raysim.config import SyntheticConfig
from raysim.data.federated import ArrayDataset
from raysim.data.leaf import UserDataset

SAMPLES_SIGMA = 2.0  # LEAF's log-normal sigma for samples per user
USERS_PER_BLOCK = 2048  # users generated together: vectorised, with bounded temporaries


def user_row_counts(cfg: SyntheticConfig, num_users: int, rng: np.random.Generator) -> np.ndarray:
    """Rows per user (int64): LEAF's log-normal draw. Its heavy tail reaches tens of thousands
    of rows for one user; the clip keeps runs bounded."""
    return np.clip(rng.lognormal(cfg.mean_samples, SAMPLES_SIGMA, num_users).astype(np.int64),
                   cfg.min_samples, cfg.max_samples)


def rows_for_test(counts: np.ndarray, test_fraction: float) -> np.ndarray:
    """Of each user's rows, how many are test rows: at least one, and one train row at least."""
    return np.clip(np.round(counts * test_fraction).astype(np.int64), 1, counts - 1)


def generate_synthetic(cfg: SyntheticConfig, num_users: int, rng: np.random.Generator) -> UserDataset:
    """x float32 (N, cfg.dimension); each user's rows are split train/test by cfg.test_fraction.

    Users are drawn in vectorised blocks straight into float32 arrays, so a population of
    100,000 users sets up in seconds and in memory proportional to its rows."""
    if num_users < 1:
        raise ValueError(f"num_users={num_users}: the synthetic dataset needs at least one user")
    counts = user_row_counts(cfg, num_users, rng)
    n_train = counts - rows_for_test(counts, cfg.test_fraction)
    model_means = rng.normal(0.0, cfg.alpha, num_users).astype(np.float32)
    feature_means = rng.normal(0.0, cfg.beta, num_users).astype(np.float32)
    feature_scale = (np.arange(1, cfg.dimension + 1, dtype=np.float32) ** -0.6)  # sqrt(j^-1.2)
    x = np.empty((int(counts.sum()), cfg.dimension), dtype=np.float32)
    y = np.empty(len(x), dtype=np.int64)
    row_user = np.repeat(np.arange(num_users), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for lo in range(0, num_users, USERS_PER_BLOCK):
        hi = min(lo + USERS_PER_BLOCK, num_users)
        users = np.arange(lo, hi)
        weights = model_means[users, None, None] + rng.standard_normal((len(users), cfg.dimension, cfg.num_classes),
                                                                        dtype=np.float32)
        bias = model_means[users, None] + rng.standard_normal((len(users), cfg.num_classes), dtype=np.float32)
        center = feature_means[users, None] + rng.standard_normal((len(users), cfg.dimension), dtype=np.float32)
        rows = slice(offsets[lo], offsets[hi])
        local = row_user[rows] - lo
        block = center[local] + feature_scale * rng.standard_normal((len(local), cfg.dimension), dtype=np.float32)
        logits = np.einsum("nd,ndc->nc", block, weights[local]) + bias[local]
        x[rows], y[rows] = block, logits.argmax(axis=1)
    # Each user's first n_train rows train, the rest test.
    position = np.arange(len(x)) - offsets[row_user]
    is_train = position < n_train[row_user]
    return UserDataset(
        train=ArrayDataset(x[is_train], y[is_train]),
        test=ArrayDataset(x[~is_train], y[~is_train]),
        train_users=row_user[is_train],
        num_classes=cfg.num_classes,
    )
