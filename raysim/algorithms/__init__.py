"""Federated algorithms, selected by `algorithm.name`: a registered name or an import path.

Contract of an algorithm plug-in: `factory(cfg, model_factory, example_input) ->
FederatedAlgorithm` (raysim.engine.api), where `cfg` is the ExperimentConfig,
`model_factory(arch)` builds the run's model (arch None: the original) with the run's
initial weights, and `example_input` is one batch of one example. A FederatedAlgorithm
subclass whose __init__ takes those three is such a factory. Registered with
`explores=True` when its set-up phase is an exploration (the benchmarks price it).
"""
from __future__ import annotations

import torch

from raysim.catalog import ALGORITHMS  # the built-ins, listed by import path
from raysim.config import ConfigError, ExperimentConfig
from raysim.engine.api import FederatedAlgorithm
from raysim.engine.runner import ModelFactory

__all__ = ["ALGORITHMS", "build_algorithm"]


def build_algorithm(cfg: ExperimentConfig, model_factory: ModelFactory, example_input: torch.Tensor) -> FederatedAlgorithm:
    algorithm = ALGORITHMS.get(cfg.algorithm.name)(cfg, model_factory, example_input)
    if not isinstance(algorithm, FederatedAlgorithm):
        raise ConfigError(f"algorithm.name={cfg.algorithm.name!r} built {type(algorithm).__name__}, not a "
                        "raysim.engine.api.FederatedAlgorithm")
    return algorithm
