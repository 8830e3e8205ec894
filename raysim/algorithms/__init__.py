"""Federated algorithms, selected by name in the config."""
from __future__ import annotations

from raysim.config import ExperimentConfig
from raysim.engine.api import FederatedAlgorithm


def build_algorithm(cfg: ExperimentConfig) -> FederatedAlgorithm:
    from raysim.algorithms.fedavg import FedAvg

    registry = {"fedavg": FedAvg}
    return registry[cfg.algorithm.name](cfg)
