"""AutoFLIP's entry into raysim's registries (the `raysim.plugins` entry point): raysim
finds these names without importing autoflip by name."""
from __future__ import annotations


def register() -> None:
    from autoflip.algorithm import VARIANTS, AutoFLIP
    from autoflip.baselines import HybridMagnitude, HybridRandom, MagnitudePruning, RandomPruning
    from autoflip.feddst import FedDST
    from autoflip.prunefl import PruneFL
    from raysim.algorithms import ALGORITHMS

    for name in VARIANTS:
        ALGORITHMS.register(name, AutoFLIP, explores=True)
    for cls in (RandomPruning, MagnitudePruning, HybridRandom, HybridMagnitude, PruneFL, FedDST):
        ALGORITHMS.register(cls.name, cls)
