"""How much memory a population takes to build, estimated before anything is built.

A federation holds its data rows (features and labels; while the synthetic dataset is
generated, also the copies that split them into train and test), partition index arrays
(an int64 row index per row and the numpy arrays made per client while partitioning) and
device profile arrays (a profile id per client, an availability draw per round). A
population that does not fit used to fail after seconds with a huge allocation traceback,
or grow for minutes without output; estimating first refuses it in microseconds, naming
data.num_clients and how many clients would fit.

The per-row and per-client costs are measured (CPython 3.11, numpy 2; the tests compare the
estimate with the peak resident memory of real builds) and rounded up: the estimate is
1.1 to 1.5 times the measured peak. Limits and their reasons: docs/data-limits.md.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from raysim.config import ConfigError, DataConfig, SyntheticConfig
from raysim.data.synthetic import SAMPLES_SIGMA, USERS_PER_BLOCK

# Set-up builds numpy arrays per client (partition, holdout shuffle) at about 35 s per
# million clients on one core; beyond this it would run for minutes without output.
MAX_CLIENTS = 1_000_000
# Without resident rows (data.synthetic.resident=false) set-up is a few vectorised draws:
# 10,000,000 clients set up and sample in seconds (benchmark C measures it), and every
# round still does O(population) work (availability, sampling), so the cap stays there.
MAX_LAZY_CLIENTS = 10_000_000
# Per client, without resident rows: row and held-out counts (int32 each) and, while they are
# made, the log-normal draw and its int64 casts and clip (measured 22 bytes a client at the peak).
LAZY_BYTES_PER_CLIENT = 32
PARTITION_BYTES_PER_ROW = 40  # the client index and the partition's sort temporaries (int64)
PARTITION_BYTES_PER_CLIENT = 400  # a client's row array, its shuffled copy, list slots (measured 350-390)
DEVICE_BYTES_PER_CLIENT = 20  # profile ids (uint8, while shuffled) and a round's availability draw (float64)
LABEL_BYTES = 8  # int64
CGROUP = Path("/sys/fs/cgroup")
DOCS = "docs/data-limits.md"


@dataclass(frozen=True)
class PopulationEstimate:
    """Peak bytes to build a population of `clients`, by part."""

    clients: int
    data_bytes: int
    partition_bytes: int
    device_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.data_bytes + self.partition_bytes + self.device_bytes


def expected_rows_per_user(cfg: SyntheticConfig) -> float:
    """E[clip(X, min_samples, max_samples)] for X log-normal(mean_samples, SAMPLES_SIGMA): the
    generator's rows per user (it floors X too, so this overestimates by under one row)."""
    mu, sigma, low, high = cfg.mean_samples, SAMPLES_SIGMA, cfg.min_samples, cfg.max_samples

    def below(value: float, shift: float = 0.0) -> float:  # standard normal CDF at (ln value - mu)/sigma - shift
        return 0.5 * (1 + math.erf(((math.log(value) - mu) / sigma - shift) / math.sqrt(2)))

    between = math.exp(mu + sigma**2 / 2) * (below(high, sigma) - below(low, sigma))
    return low * below(low) + high * (1 - below(high)) + between


def estimate_synthetic(cfg: DataConfig) -> PopulationEstimate:
    """The synthetic dataset of cfg.num_clients users, from its settings alone."""
    syn, clients = cfg.synthetic, cfg.num_clients
    rows = math.ceil(clients * expected_rows_per_user(syn))
    row_bytes = 4 * syn.dimension + LABEL_BYTES  # float32 features, int64 label
    # The full x, y and row users, then either a block's temporaries (each row's user model,
    # D x C floats, dominates) or the train/test copies and their masks, whichever is larger.
    block_rows = math.ceil(min(clients, USERS_PER_BLOCK) * expected_rows_per_user(syn))
    block = block_rows * 4 * (syn.dimension * syn.num_classes + 4 * syn.dimension + 4 * syn.num_classes)
    data = rows * (row_bytes + 8) + max(block, rows * (row_bytes + 25))
    if cfg.max_train_samples is not None:
        data += min(cfg.max_train_samples, rows) * row_bytes  # the subsample's copy
    return _with_partition(clients, rows, data)


def estimate_lazy_synthetic(cfg: DataConfig) -> PopulationEstimate:
    """The synthetic dataset without resident rows: small arrays per client and the global
    test set (test_users users' test rows, at most max_samples rows each)."""
    syn, clients = cfg.synthetic, cfg.num_clients
    test_rows = min(syn.test_users, clients) * math.ceil(expected_rows_per_user(syn) * syn.test_fraction + 1)
    # The test rows twice (the users' parts, then joined), and one user's rows while they are
    # generated (features, their noise and the logits).
    test_bytes = (test_rows * (4 * syn.dimension + LABEL_BYTES) * 2
                  + syn.max_samples * 4 * (2 * syn.dimension + syn.num_classes))
    return PopulationEstimate(clients=clients, data_bytes=clients * LAZY_BYTES_PER_CLIENT + test_bytes,
                              partition_bytes=0, device_bytes=clients * DEVICE_BYTES_PER_CLIENT)


def estimate_partition(cfg: DataConfig, train_rows: int, row_bytes: int, clients: int) -> PopulationEstimate:
    """What remains to build once the central data is in memory: the subsample's copy,
    the partition and the device profiles of `clients`."""
    rows = min(train_rows, cfg.max_train_samples or train_rows)
    copy = rows * row_bytes if rows < train_rows else 0
    return _with_partition(clients, rows, copy)


def _with_partition(clients: int, rows: int, data_bytes: int) -> PopulationEstimate:
    return PopulationEstimate(
        clients=clients,
        data_bytes=data_bytes,
        partition_bytes=rows * PARTITION_BYTES_PER_ROW + clients * PARTITION_BYTES_PER_CLIENT,
        device_bytes=clients * DEVICE_BYTES_PER_CLIENT,
    )


def available_memory_bytes(cgroup: Path = CGROUP) -> int:
    """Memory this process can still take: the machine's available memory, or less where a
    cgroup v2 limit (a container's, a Kubernetes pod's) leaves less."""
    available = psutil.virtual_memory().available
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        used = int((cgroup / "memory.current").read_text())
    except (OSError, ValueError):
        return available
    return available if limit == "max" else min(available, max(int(limit) - used, 0))


def check_population(
    estimate: PopulationEstimate,
    available: int,
    estimate_for: Callable[[int], PopulationEstimate],
    requested: int,
    settings: str = "",
    max_clients: int = MAX_CLIENTS,
    alternative: str = "",
) -> None:
    """Raise ConfigError, naming data.num_clients (`requested`) and what would fit, when the
    population exceeds `max_clients` or its estimate exceeds `available` bytes. `estimate_for(n)`
    is the estimate for n clients with everything else the same; `settings` names what else
    the estimate depends on; `alternative` is advice to add (a mode that would fit)."""
    over_cap, over_memory = estimate.clients > max_clients, estimate.total_bytes > available
    if not (over_cap or over_memory):
        return
    setting = f"data.num_clients={requested:,}"
    if estimate.clients != requested:
        setting += f" ({estimate.clients:,} clients)"
    if not over_memory:
        why = ("set-up builds arrays per client, about 35 s per million" if max_clients == MAX_CLIENTS
               else "every round samples from the whole population")
        raise ConfigError(
            f"{setting}: over raysim's limit of {max_clients:,} clients ({why}); use at most {max_clients:,}"
            f"{alternative} ({DOCS})"
        )
    fit = _most_clients_within(available, min(estimate.clients, max_clients), estimate_for)
    advice = f"at most {fit:,} clients fit" if fit else "not even one client fits"
    raise ConfigError(
        f"{setting}: building this population needs about {_gib(estimate.total_bytes)} (data rows "
        f"{_gib(estimate.data_bytes)}, partition index arrays {_gib(estimate.partition_bytes)}, device profiles "
        f"{_gib(estimate.device_bytes)}) but {_gib(available)} of memory is available; {advice}{settings}{alternative} ({DOCS})"
    )


def _most_clients_within(available: int, upper: int, estimate_for: Callable[[int], PopulationEstimate]) -> int:
    """The largest n <= upper whose estimate fits (estimates grow with n), 0 if none."""
    low, high = 0, upper
    while low < high:
        mid = (low + high + 1) // 2
        if estimate_for(mid).total_bytes <= available:
            low = mid
        else:
            high = mid - 1
    return low


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"
