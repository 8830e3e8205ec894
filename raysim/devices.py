"""Device profiles, the client population and the simulated clock.

Modelled on FedScale's client metadata and virtual clock: a client's round
time is the compute time of the FLOPs it really executed plus the transfer
time of the bytes it really moved plus one round trip of latency, and a
round lasts as long as its slowest included client (or the deadline).

Units: FLOPs and FLOP/s; payloads in bytes, bandwidths in bits per second,
so a transfer takes 8 * bytes / bps seconds.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from raysim.registry import Registry

# A fixed word mixed into the availability seed so that availability draws
# never coincide with another stream seeded by the same (seed, round).
_AVAILABILITY_STREAM = 0xA7A1


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    flops_per_s: float  # sustained training throughput
    down_bps: float  # downlink bits per second
    up_bps: float  # uplink bits per second
    latency_s: float  # per round trip (one download + one upload exchange)
    availability: float  # probability the device is online in a given round, (0, 1]

    def __post_init__(self) -> None:
        for field in fields(self)[1:]:
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"device {self.name!r}: {field.name} must be a finite number, got {value!r}")
        for name in ("flops_per_s", "down_bps", "up_bps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"device {self.name!r}: {name} must be positive, got {getattr(self, name)!r}")
        if self.latency_s < 0:
            raise ValueError(f"device {self.name!r}: latency_s must be >= 0, got {self.latency_s!r}")
        if not 0 < self.availability <= 1:
            raise ValueError(f"device {self.name!r}: availability must be in (0, 1], got {self.availability!r}")


# Orders of magnitude, not measurements of any one device:
# - throughput: sustained fp32 *training* (forward + backward), well below the
#   peak TOPS of mobile NPUs. AI-Benchmark / MLPerf Mobile put mobile CPU/GPU
#   fp32 at single to tens of GFLOP/s sustained (low-end to flagship SoCs);
#   laptop CPUs at tens to ~100 GFLOP/s; a Raspberry-Pi-class IoT board near
#   1 GFLOP/s; a data-centre GPU (A100/H100-class, MLPerf Training) at tens of
#   TFLOP/s achieved.
# - bandwidth: Ookla Speedtest Global Index medians, mobile ~50 Mbit/s down and
#   ~10 up, fixed broadband ~90 down and ~40 up; older 4G / congested cells a
#   few Mbit/s; LTE-M / NB-IoT links around 1 Mbit/s and below.
# - availability: FedScale's device traces (charging, on Wi-Fi, idle) make
#   phones available a minority to a majority of the time; plugged-in devices more.
PROFILES = Registry("device profile", "devices.mix")
"""Device profile plug-ins: a DeviceProfile, registered under its name or named by an
import path in `devices.mix` (e.g. `mylab.devices:WATCH`)."""
for _profile in (
    DeviceProfile("iot", flops_per_s=0.5e9, down_bps=1e6, up_bps=0.5e6, latency_s=0.5, availability=0.9),
    DeviceProfile("phone_low", flops_per_s=2e9, down_bps=5e6, up_bps=1e6, latency_s=0.2, availability=0.3),
    DeviceProfile("phone_mid", flops_per_s=8e9, down_bps=20e6, up_bps=5e6, latency_s=0.1, availability=0.4),
    DeviceProfile("phone_high", flops_per_s=25e9, down_bps=80e6, up_bps=15e6, latency_s=0.05, availability=0.5),
    DeviceProfile("tablet", flops_per_s=15e9, down_bps=50e6, up_bps=10e6, latency_s=0.05, availability=0.5),
    DeviceProfile("laptop", flops_per_s=60e9, down_bps=90e6, up_bps=40e6, latency_s=0.03, availability=0.7),
    DeviceProfile("datacenter_gpu", flops_per_s=50e12, down_bps=10e9, up_bps=10e9, latency_s=0.001, availability=1.0),
):
    PROFILES.register(_profile.name, _profile)


def device_profile(name: str) -> DeviceProfile:
    """The profile `name` (registered, or an import path to a DeviceProfile)."""
    profile = PROFILES.get(name)
    if not isinstance(profile, DeviceProfile):
        raise LookupError(f"devices.mix: {name!r} is {type(profile).__name__}, not a raysim.devices.DeviceProfile")
    return profile


@dataclass(frozen=True)
class ClientTime:
    compute_s: float
    download_s: float
    upload_s: float
    latency_s: float
    total_s: float


def client_time_s(profile: DeviceProfile, flops: float, bytes_down: int, bytes_up: int) -> ClientTime:
    """Simulated seconds one client spends on a round: executed FLOPs at the
    profile's throughput, payload bytes over its links, and one round trip."""
    for name, value in (("flops", flops), ("bytes_down", bytes_down), ("bytes_up", bytes_up)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    compute = flops / profile.flops_per_s
    download = 8 * bytes_down / profile.down_bps
    upload = 8 * bytes_up / profile.up_bps
    return ClientTime(compute, download, upload, profile.latency_s, compute + download + upload + profile.latency_s)


class Population:
    """Which profile each client has: one small int per client, indexing `profiles`."""

    def __init__(self, profiles: Sequence[DeviceProfile], profile_ids: np.ndarray) -> None:
        if len(profiles) == 0:
            raise ValueError("a population needs at least one device profile")
        if len(profiles) > np.iinfo(np.uint8).max + 1:
            raise ValueError(f"at most 256 device profiles, got {len(profiles)}")
        names = [p.name for p in profiles]
        if len(set(names)) != len(names):
            raise ValueError(f"device profile names must be unique, got {names}")
        ids = np.asarray(profile_ids)
        if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= len(profiles))):
            raise ValueError(f"profile_ids must be a 1-D array of indices into {len(profiles)} profiles")
        self.profiles: tuple[DeviceProfile, ...] = tuple(profiles)
        self.profile_ids: np.ndarray = ids.astype(np.uint8)
        self._availability = np.array([p.availability for p in self.profiles])

    @classmethod
    def from_mix(cls, num_clients: int, mix: Mapping[str, float], seed: int) -> Population:
        """Exact shares of the mix (largest remainder), shuffled by `seed`: a 10/90
        mix gives exactly 10 % and 90 %, not a binomial draw around them."""
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        if not mix:
            raise ValueError(f"the device mix is empty; profiles: {', '.join(PROFILES.names())}")
        try:
            profiles = [device_profile(name) for name in mix]
        except LookupError as exc:
            raise ValueError(f"devices.mix: {exc}") from None
        weights = np.array(list(mix.values()), dtype=float)
        if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            raise ValueError(f"device mix weights must be positive and finite, got {dict(mix)}")
        quotas = weights / weights.sum() * num_clients
        counts = np.floor(quotas).astype(np.int64)
        # Stable sort: equal remainders go to the profile listed first in the mix.
        by_remainder = np.argsort(-(quotas - counts), kind="stable")
        counts[by_remainder[: num_clients - counts.sum()]] += 1
        ids = np.repeat(np.arange(len(mix), dtype=np.uint8), counts)
        rng = np.random.default_rng(seed)
        return cls(profiles, rng.permutation(ids))

    def __len__(self) -> int:
        return self.profile_ids.size

    def profile(self, client: int) -> DeviceProfile:
        if not 0 <= client < len(self):
            raise IndexError(f"client {client} outside the population of {len(self)}")
        return self.profiles[self.profile_ids[client]]

    def available(self, round_idx: int, seed: int) -> np.ndarray:
        """Which clients are online in round `round_idx`: each independently with its
        profile's availability, the same for the same (seed, round)."""
        if round_idx < 0 or seed < 0:
            raise ValueError(f"round_idx and seed must be >= 0, got {round_idx} and {seed}")
        rng = np.random.default_rng([seed, round_idx, _AVAILABILITY_STREAM])
        return rng.random(len(self)) < self._availability[self.profile_ids]

    def counts(self) -> dict[str, int]:
        per_id = np.bincount(self.profile_ids, minlength=len(self.profiles))
        return {p.name: int(n) for p, n in zip(self.profiles, per_id)}


def misses_deadline(total_s: float, deadline_s: float | None) -> bool:
    """A client finishing exactly at the deadline is included."""
    return deadline_s is not None and total_s > deadline_s


def round_time_s(slowest_included_s: float, dropped: int, deadline_s: float | None) -> float:
    """Simulated seconds of a round. It lasts the slowest included client; if anyone
    was dropped it lasts the full deadline, because the server only learns a client
    is a straggler when the deadline passes. Both inputs merge across workers (max, sum)."""
    if deadline_s is not None and dropped > 0:
        return float(deadline_s)
    return float(slowest_included_s)
