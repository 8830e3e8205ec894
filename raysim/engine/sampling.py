"""Which clients take part in a round: a function of (root seed, round) only, so
every algorithm compared under one seed sees the same clients."""
from __future__ import annotations

import numpy as np

from raysim.config import ConfigError
from raysim.engine.seeds import rng_for


def cohort_size(per_round: float, population: int) -> int:
    """`per_round` >= 1 is a count, < 1 a fraction of the population (at least one client)."""
    count = int(per_round) if per_round >= 1 else max(1, int(round(per_round * population)))
    if count > population:
        raise ConfigError(f"clients.per_round={per_round:g} asks for {count} clients but the population has "
                          f"{population}: lower it, give a fraction in (0, 1), or raise data.num_clients")
    return count


def sample_clients(root_seed: int, round_idx: int, count: int, available: np.ndarray) -> list[int]:
    """Uniformly without replacement among the clients online this round (all of them if fewer)."""
    online = np.flatnonzero(available)
    rng = rng_for(root_seed, "sample", round_idx)
    chosen = rng.choice(online, size=min(count, len(online)), replace=False) if len(online) else online
    return sorted(int(c) for c in chosen)
