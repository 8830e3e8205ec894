"""Federated algorithms, selected by name in the config."""
from __future__ import annotations

import torch

from raysim.config import ExperimentConfig
from raysim.engine.api import FederatedAlgorithm
from raysim.engine.runner import ModelFactory


def build_algorithm(cfg: ExperimentConfig, model_factory: ModelFactory, example_input: torch.Tensor) -> FederatedAlgorithm:
    from raysim.algorithms.fedavg import FedAvg

    name = cfg.algorithm.name
    if name == "fedavg":
        return FedAvg(cfg)
    # Imported lazily: the pruning methods live in the autoflip package.
    from autoflip.algorithm import VARIANTS, AutoFLIP
    from autoflip.baselines import HybridMagnitude, HybridRandom, MagnitudePruning, RandomPruning
    from autoflip.feddst import FedDST
    from autoflip.prunefl import PruneFL

    if name in VARIANTS:
        return AutoFLIP(cfg, model_factory, example_input)
    baselines = {c.name: c for c in (RandomPruning, MagnitudePruning, HybridRandom, HybridMagnitude, PruneFL, FedDST)}
    return baselines[name](cfg, model_factory, example_input)
