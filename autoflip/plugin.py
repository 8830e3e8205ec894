"""AutoFLIP's entry into raysim's registries (the `raysim.plugins` entry point): raysim
finds these names without importing autoflip by name. Registered by import path, so
listing or validating them imports no torch; the classes load on first use."""
from __future__ import annotations

BASELINES = {"random": "baselines:RandomPruning", "magnitude": "baselines:MagnitudePruning",
             "hybrid_random": "baselines:HybridRandom", "hybrid_magnitude": "baselines:HybridMagnitude",
             "prunefl": "prunefl:PruneFL", "feddst": "feddst:FedDST"}


def register() -> None:
    from autoflip.variants import VARIANTS
    from raysim.catalog import ALGORITHMS

    for name in VARIANTS:
        ALGORITHMS.register_lazy(name, "autoflip.algorithm:AutoFLIP", explores=True)
    for name, path in BASELINES.items():
        ALGORITHMS.register_lazy(name, f"autoflip.{path}")
