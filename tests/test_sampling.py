"""Which clients take part: cohort sizes and the per-round sample."""
import numpy as np
import pytest

from raysim.engine.sampling import cohort_size, sample_clients


@pytest.mark.parametrize("per_round, population, want", [
    (1, 50, 1), (10, 50, 10), (50, 50, 50),  # counts
    (0.1, 50, 5), (0.5, 7, 4), (0.25, 10, 2), (0.001, 50, 1), (0.99, 50, 50),  # fractions, rounded, at least one
])
def test_cohort_size_counts_and_fractions(per_round, population, want):
    assert cohort_size(per_round, population) == want


def test_cohort_larger_than_the_population_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"clients.per_round=60 asks for 60 clients but the population has 50"):
        cohort_size(60, 50)


def test_sample_is_without_replacement_among_online_clients_and_follows_seed_and_round():
    online = np.zeros(100, dtype=bool)
    online[::3] = True  # 34 clients online
    picked = sample_clients(7, 4, 10, online)
    assert len(picked) == len(set(picked)) == 10 and picked == sorted(picked)
    assert all(online[c] for c in picked)
    assert sample_clients(7, 4, 10, online) == picked  # a function of (seed, round)
    assert sample_clients(7, 5, 10, online) != picked  # another round, another cohort
    assert sample_clients(8, 4, 10, online) != picked  # another seed too
    assert sample_clients(7, 4, 50, online) == list(range(0, 100, 3))  # fewer online than asked: all of them
    assert sample_clients(7, 4, 10, np.zeros(100, dtype=bool)) == []


def test_sample_is_uniform_over_rounds():
    """2,000 rounds of 5 out of 20: each client's share is 1/4 within sampling error."""
    counts = np.zeros(20)
    for r in range(2000):
        counts[sample_clients(3, r, 5, np.ones(20, dtype=bool))] += 1
    expected = 2000 * 5 / 20  # 500, binomial sd about 19
    assert np.abs(counts - expected).max() < 80
