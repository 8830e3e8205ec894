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
# LEAF's heavy tail reaches tens of thousands of rows for one user; the clip keeps a default run small.
MIN_SAMPLES_PER_USER = 20
MAX_SAMPLES_PER_USER = 1000


def generate_synthetic(cfg: SyntheticConfig, num_users: int, rng: np.random.Generator) -> UserDataset:
    """x float32 (N, cfg.dimension); each user's rows are split train/test by cfg.test_fraction."""
    if num_users < 1:
        raise ValueError(f"num_users={num_users}: the synthetic dataset needs at least one user")
    counts = np.clip(
        rng.lognormal(cfg.mean_samples, SAMPLES_SIGMA, num_users).astype(np.int64),
        MIN_SAMPLES_PER_USER,
        MAX_SAMPLES_PER_USER,
    )
    model_means = rng.normal(0.0, cfg.alpha, num_users)
    feature_means = rng.normal(0.0, cfg.beta, num_users)
    feature_scale = np.arange(1, cfg.dimension + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
    parts: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": [], "users": []}
    for user in range(num_users):
        weights = rng.normal(model_means[user], 1.0, (cfg.dimension, cfg.num_classes))
        bias = rng.normal(model_means[user], 1.0, cfg.num_classes)
        center = rng.normal(feature_means[user], 1.0, cfg.dimension)
        x = center + feature_scale * rng.standard_normal((counts[user], cfg.dimension))
        y = np.argmax(x @ weights + bias, axis=1).astype(np.int64)
        n_test = int(np.clip(round(counts[user] * cfg.test_fraction), 1, counts[user] - 1))
        n_train = counts[user] - n_test
        parts["train_x"].append(x[:n_train])
        parts["train_y"].append(y[:n_train])
        parts["test_x"].append(x[n_train:])
        parts["test_y"].append(y[n_train:])
        parts["users"].append(np.full(n_train, user, dtype=np.int64))
    joined = {key: np.concatenate(value) for key, value in parts.items()}
    return UserDataset(
        train=ArrayDataset(joined["train_x"].astype(np.float32), joined["train_y"]),
        test=ArrayDataset(joined["test_x"].astype(np.float32), joined["test_y"]),
        train_users=joined["users"],
        num_classes=cfg.num_classes,
    )
