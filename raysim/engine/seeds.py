"""Every random choice derives from one root seed and the (purpose, round, client) it serves,
so a client's work is the same whichever process runs it and in whatever order."""
from __future__ import annotations

import numpy as np

_PURPOSES = {"init": 0, "sample": 1, "client": 2, "availability": 3, "population": 4, "algorithm": 5, "eval": 6, "data": 7}


def derive_seed(root: int, purpose: str, *keys: int) -> int:
    if purpose not in _PURPOSES:
        raise ValueError(f"unknown seed purpose {purpose!r}; known: {sorted(_PURPOSES)}")
    seq = np.random.SeedSequence(root, spawn_key=(_PURPOSES[purpose], *map(int, keys)))
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def rng_for(root: int, purpose: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(root, purpose, *keys))
