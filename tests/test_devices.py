"""The simulated clock: hand-computed times, deadlines, and population draws."""
from __future__ import annotations

import numpy as np
import pytest

from raysim.devices import (
    PROFILES,
    DeviceProfile,
    Population,
    client_time_s,
    device_profile,
    misses_deadline,
    round_time_s,
)


def profile(**overrides) -> DeviceProfile:
    numbers = dict(flops_per_s=1e8, down_bps=8e6, up_bps=4e6, latency_s=0.5, availability=0.5)
    return DeviceProfile("test", **{**numbers, **overrides})


def test_client_time_adds_compute_transfers_and_latency():
    time = client_time_s(profile(), flops=1e9, bytes_down=1_000_000, bytes_up=1_000_000)

    assert time.compute_s == pytest.approx(10.0)  # 1e9 FLOPs at 1e8 FLOP/s
    assert time.download_s == pytest.approx(1.0)  # 8e6 bits at 8 Mbit/s
    assert time.upload_s == pytest.approx(2.0)  # 8e6 bits at 4 Mbit/s
    assert time.latency_s == 0.5
    assert time.total_s == pytest.approx(13.5)


def test_client_time_rejects_negative_work():
    with pytest.raises(ValueError, match="bytes_up"):
        client_time_s(profile(), flops=1.0, bytes_down=0, bytes_up=-1)


@pytest.mark.parametrize(
    ("field", "value"),
    [("flops_per_s", 0), ("down_bps", -1), ("up_bps", float("nan")), ("latency_s", -0.1),
     ("availability", 0), ("availability", 1.5)],
)
def test_profile_numbers_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        profile(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("flops_per_s", True), ("down_bps", "5e6"), ("flops_per_s", float("inf"))])
def test_profile_numbers_must_be_real_finite_numbers(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        profile(**{field: value})


def test_profile_boundaries_that_are_allowed():
    """Throughput and bandwidth below 1 are still positive; no latency; always online."""
    p = profile(flops_per_s=0.5, down_bps=0.25, up_bps=0.75, latency_s=0.0, availability=1.0)
    assert (p.flops_per_s, p.latency_s, p.availability) == (0.5, 0.0, 1.0)
    assert Population([p], np.zeros(1000, dtype=np.uint8)).available(0, seed=0).all()


def test_availability_refuses_negative_rounds_and_seeds():
    population = Population.from_mix(10, {"phone_mid": 1}, seed=0)
    for round_idx, seed in ((-1, 0), (0, -1)):
        with pytest.raises(ValueError, match="round_idx and seed must be >= 0"):
            population.available(round_idx, seed)


def test_counts_name_every_profile_even_an_unused_one():
    population = Population([device_profile("iot"), device_profile("laptop")], np.zeros(5, dtype=np.uint8))
    assert population.counts() == {"iot": 5, "laptop": 0}


def test_catalogue_is_self_consistent():
    low, mid, high = device_profile("phone_low"), device_profile("phone_mid"), device_profile("phone_high")
    laptop, iot, gpu = device_profile("laptop"), device_profile("iot"), device_profile("datacenter_gpu")
    speed = ("flops_per_s", "down_bps", "up_bps")
    for slower, faster in ((iot, low), (low, mid), (mid, high), (high, laptop), (laptop, gpu)):
        for attr in speed:
            assert getattr(slower, attr) < getattr(faster, attr), (slower.name, faster.name, attr)
    assert low.latency_s > mid.latency_s > high.latency_s > gpu.latency_s
    assert all(name == p.name for name, p in ((n, device_profile(n)) for n in PROFILES.names()))


def _close_round(totals, deadline_s):
    """What the engine does: each client checked where it ran, the round closed from merged max and count."""
    included = [not misses_deadline(t, deadline_s) for t in totals]
    slowest = max((t for t, ok in zip(totals, included) if ok), default=0.0)
    return round_time_s(slowest, included.count(False), deadline_s), included


def test_round_without_deadline_lasts_the_slowest_client():
    seconds, included = _close_round([3.0, 9.5, 1.0], None)
    assert seconds == 9.5
    assert included == [True, True, True]


def test_deadline_drops_exactly_the_clients_above_it_and_the_round_lasts_the_deadline():
    seconds, included = _close_round([3.0, 12.0, 8.0, 10.5], deadline_s=10.0)
    assert included == [True, False, True, False]
    assert seconds == 10.0  # not 8.0: the server waited for the stragglers until the deadline


def test_a_client_finishing_exactly_at_the_deadline_is_included():
    seconds, included = _close_round([10.0, 4.0], deadline_s=10.0)
    assert included == [True, True]
    assert seconds == 10.0


def test_deadline_nobody_misses_lasts_the_slowest_client():
    seconds, included = _close_round([3.0, 7.0], deadline_s=10.0)
    assert seconds == 7.0
    assert all(included)


def test_deadline_everybody_misses():
    seconds, included = _close_round([11.0, 12.0], deadline_s=10.0)
    assert seconds == 10.0
    assert not any(included)



def test_population_mix_is_exact():
    population = Population.from_mix(1000, {"phone_low": 1, "laptop": 9}, seed=0)

    assert population.counts() == {"phone_low": 100, "laptop": 900}
    assert population.profile_ids.dtype == np.uint8 and population.profile_ids.shape == (1000,)
    assert sum(population.profile(c).name == "phone_low" for c in range(1000)) == 100


def test_population_mix_uses_largest_remainders():
    # quotas 3.33.., 3.33.., 3.33..: one extra client goes to the first listed
    population = Population.from_mix(10, {"phone_low": 1, "phone_mid": 1, "tablet": 1}, seed=0)

    assert population.counts() == {"phone_low": 4, "phone_mid": 3, "tablet": 3}
    # quotas 0.7 and 6.3: remainders 0.7 > 0.3
    population = Population.from_mix(7, {"iot": 0.1, "laptop": 0.9}, seed=0)
    assert population.counts() == {"iot": 1, "laptop": 6}


def test_population_is_deterministic_for_a_seed_and_shuffled_by_it():
    mix = {"phone_low": 0.3, "phone_mid": 0.4, "phone_high": 0.2, "laptop": 0.1}
    first = Population.from_mix(500, mix, seed=1)
    again = Population.from_mix(500, mix, seed=1)
    other = Population.from_mix(500, mix, seed=2)

    assert np.array_equal(first.profile_ids, again.profile_ids)
    assert not np.array_equal(first.profile_ids, other.profile_ids)
    assert first.counts() == other.counts()
    # shuffled, not laid out in blocks
    assert np.count_nonzero(np.diff(first.profile_ids.astype(int))) > 100


@pytest.mark.parametrize("mix", [{"phone_low": 0}, {"phone_low": 1, "laptop": -1}, {}])
def test_population_rejects_non_positive_weights(mix):
    with pytest.raises(ValueError, match="mix"):
        Population.from_mix(10, mix, seed=0)


def test_unknown_profile_lists_the_catalogue():
    with pytest.raises(ValueError, match="smartwatch") as info:
        Population.from_mix(10, {"smartwatch": 1.0}, seed=0)
    for name in PROFILES.names():
        assert name in str(info.value)


def test_profile_lookup_rejects_clients_outside_the_population():
    population = Population.from_mix(5, {"laptop": 1}, seed=0)
    with pytest.raises(IndexError):
        population.profile(5)
    with pytest.raises(IndexError):
        population.profile(-1)


def test_availability_is_deterministic_per_round_and_varies_across_rounds():
    population = Population.from_mix(2000, {"phone_mid": 1}, seed=0)

    round3 = population.available(3, seed=7)

    assert round3.dtype == bool and round3.shape == (2000,)
    assert np.array_equal(round3, population.available(3, seed=7))
    assert not np.array_equal(round3, population.available(4, seed=7))
    assert not np.array_equal(round3, population.available(3, seed=8))


def test_availability_rate_matches_each_profile():
    population = Population.from_mix(100_000, {"phone_low": 0.5, "laptop": 0.5}, seed=0)
    online = population.available(0, seed=0)
    low_id = [p.name for p in population.profiles].index("phone_low")
    is_low = population.profile_ids == low_id

    # 50,000 draws each: the standard error is about 0.002
    assert online[is_low].mean() == pytest.approx(device_profile("phone_low").availability, abs=0.01)
    assert online[~is_low].mean() == pytest.approx(device_profile("laptop").availability, abs=0.01)
