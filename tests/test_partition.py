"""Partitioners deliver the label distributions they promise."""
from __future__ import annotations

import numpy as np
import pytest

from raysim.data.partition import classes_per_client, dirichlet, iid, natural


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def balanced_labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    return rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def assert_disjoint_cover(parts: list[np.ndarray], n_rows: int) -> None:
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64
    np.testing.assert_array_equal(np.sort(joined), np.arange(n_rows))


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-client label distributions, one row per client."""
    counts = np.array([np.bincount(labels[p], minlength=num_classes) for p in parts], dtype=np.float64)
    return counts / counts.sum(axis=1, keepdims=True)


def mean_distance_to_global(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance of client label mixes from the global mix (0: iid, 1: disjoint)."""
    global_mix = np.bincount(labels, minlength=num_classes) / len(labels)
    return float(np.mean(0.5 * np.abs(label_histograms(labels, parts, num_classes) - global_mix).sum(axis=1)))


# ---------------------------------------------------------------- iid


@pytest.mark.parametrize("n_rows, num_clients", [(10, 3), (100, 7), (5, 5), (1, 1)])
def test_iid_sizes_differ_by_at_most_one_and_cover(n_rows, num_clients):
    parts = iid(n_rows, num_clients, rng())
    assert len(parts) == num_clients
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert_disjoint_cover(parts, n_rows)


def test_iid_is_seeded_and_shuffled():
    first, again, other = iid(50, 5, rng(1)), iid(50, 5, rng(1)), iid(50, 5, rng(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert not np.array_equal(first[0], np.arange(10))


@pytest.mark.parametrize("num_clients", [0, 11])
def test_iid_rejects_bad_client_counts(num_clients):
    with pytest.raises(ValueError, match="num_clients"):
        iid(10, num_clients, rng())


# ---------------------------------------------------------------- dirichlet


def test_dirichlet_skew_follows_alpha():
    labels = balanced_labels(10, 200)
    skewed = dirichlet(labels, 20, 0.05, rng(3), min_samples=1)
    uniform = dirichlet(labels, 20, 1000.0, rng(3), min_samples=1)
    for parts in (skewed, uniform):
        assert len(parts) == 20
        assert_disjoint_cover(parts, len(labels))
    assert mean_distance_to_global(labels, skewed, 10) > 0.6
    assert mean_distance_to_global(labels, uniform, 10) < 0.1
    dominant_share = label_histograms(labels, skewed, 10).max(axis=1)
    assert np.median(dominant_share) > 0.5  # most clients are dominated by one label


def test_dirichlet_respects_min_samples_and_seed():
    labels = balanced_labels(5, 40)
    parts = dirichlet(labels, 10, 0.3, rng(4), min_samples=8)
    assert min(len(p) for p in parts) >= 8
    again = dirichlet(labels, 10, 0.3, rng(4), min_samples=8)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_dirichlet_gives_up_with_a_clear_error():
    labels = balanced_labels(10, 10)
    with pytest.raises(ValueError, match="min_samples=10: no Dirichlet"):
        dirichlet(labels, 10, 0.01, rng(), min_samples=10)  # possible in principle, never drawn
    with pytest.raises(ValueError, match="min_samples=11"):
        dirichlet(labels, 10, 1.0, rng(), min_samples=11)  # impossible: 110 > 100 rows


def test_dirichlet_validates_arguments():
    labels = balanced_labels(3, 5)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet(labels, 3, 0.0, rng())
    with pytest.raises(ValueError, match="num_clients"):
        dirichlet(labels, 16, 1.0, rng())


# ---------------------------------------------------------------- classes per client


@pytest.mark.parametrize(
    "num_classes, per_class, num_clients, k",
    [(10, 60, 100, 2), (10, 30, 7, 3), (10, 20, 13, 10), (4, 25, 3, 4), (62, 5, 20, 3), (10, 6, 10, 1)],
)
def test_classes_per_client_gives_exactly_k_labels(num_classes, per_class, num_clients, k):
    labels = balanced_labels(num_classes, per_class, seed=k)
    parts = classes_per_client(labels, num_clients, k, rng(5))
    assert len(parts) == num_clients
    assert all(len(np.unique(labels[p])) == k for p in parts)
    holders = np.zeros(num_classes, dtype=np.int64)
    for p in parts:
        holders[np.unique(labels[p])] += 1
    assert holders.max() - holders.min() <= 1  # every label shared by floor/ceil(num_clients * k / classes)
    if num_clients * k >= num_classes:
        assert_disjoint_cover(parts, len(labels))


def test_classes_per_client_shards_are_balanced_and_varied():
    labels = balanced_labels(10, 100)
    parts = classes_per_client(labels, 50, 2, rng(6))
    assert {len(p) for p in parts} == {20}  # each label cut into 10 equal shards of 10
    pairs = {tuple(np.unique(labels[p])) for p in parts}
    assert len(pairs) > 10  # not just 5 fixed label pairs repeated


def test_classes_per_client_with_few_slots_leaves_labels_out():
    labels = balanced_labels(10, 10)
    parts = classes_per_client(labels, 2, 2, rng(7))
    used = np.concatenate(parts)
    assert all(len(np.unique(labels[p])) == 2 for p in parts)
    assert len(np.unique(labels[used])) == 4 and len(used) == 40


def test_classes_per_client_validates_arguments():
    labels = balanced_labels(3, 4)
    with pytest.raises(ValueError, match="k=4"):
        classes_per_client(labels, 2, 4, rng())
    with pytest.raises(ValueError, match="k=0"):
        classes_per_client(labels, 2, 0, rng())
    with pytest.raises(ValueError, match="num_clients=13"):
        classes_per_client(labels, 13, 1, rng())
    scarce = np.array([0] * 10 + [1] * 2)
    with pytest.raises(ValueError, match="label 1 has 2 rows but 3 clients"):
        classes_per_client(scarce, 6, 1, rng())


# ---------------------------------------------------------------- natural


def test_natural_groups_rows_by_user():
    users = np.array([2, 0, 2, 1, 0, 2, 5])
    parts = natural(users)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5], [6]]


def test_natural_max_clients_keeps_largest_users():
    users = np.array([0, 1, 1, 2, 2, 2, 3, 3])
    parts = natural(users, max_clients=2)
    assert [p.tolist() for p in parts] == [[1, 2], [3, 4, 5]]  # users 1 and 3 tie; the lower id wins
    assert len(natural(users, max_clients=9)) == 4


def test_natural_validates_arguments():
    with pytest.raises(ValueError, match="users"):
        natural(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="max_clients"):
        natural(np.array([0, 1]), max_clients=0)


# --- What a user sees when a split cannot be made, or a plug-in breaks the contract --------

def overlapping_split(labels, users, num_clients, spec, rng):
    return [np.arange(0, 10), np.arange(5, 15)]


def out_of_range_split(labels, users, num_clients, spec, rng):
    return [np.array([0, len(labels)])]


def float_split(labels, users, num_clients, spec, rng):
    return [np.array([0.5, 1.0])]


@pytest.mark.parametrize("settings,message", [
    (["data.partition.scheme=classes", "data.partition.classes_per_client=50"], "k=50 classes per client"),
    (["data.partition.scheme=iid", "data.max_train_samples=20"], "num_clients=30 exceeds the 20 training rows"),
    (["data.partition.scheme=test_partition:overlapping_split"], "more than one client"),
    (["data.partition.scheme=test_partition:out_of_range_split"], "must lie in [0,"),
    (["data.partition.scheme=test_partition:float_split"], "integer row indices"),
])
def test_a_split_that_cannot_be_made_is_one_message_naming_the_partition(tmp_path, capsys, settings, message):
    from raysim.cli import main

    args = [a for s in settings for a in ("--set", s)]
    rc = main(["run", "--set", "data.num_clients=30", "--set", "data.partition.scheme=iid", *args,
               "--set", "backend.name=inprocess", "--no-progress", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "data.partition" in err and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # failed before the first round: no run folder left
