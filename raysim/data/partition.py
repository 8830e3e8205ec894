"""Split training rows among clients. Each partitioner returns one int64 row-index array per client."""
from __future__ import annotations

import numpy as np

DIRICHLET_MAX_DRAWS = 1000


def iid(n_rows: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random permutation cut into num_clients parts whose sizes differ by at most one."""
    _check_clients(num_clients, n_rows)
    return [part.astype(np.int64) for part in np.array_split(rng.permutation(n_rows), num_clients)]


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, min_samples: int = 1
) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): each class is shared among clients by proportions ~ Dir(alpha).

    Small alpha gives each client few classes, large alpha near-uniform label mixes. Draws
    repeat until every client has at least `min_samples` rows, at most DIRICHLET_MAX_DRAWS times.
    """
    labels = np.asarray(labels)
    _check_clients(num_clients, len(labels))
    if alpha <= 0:
        raise ValueError(f"alpha={alpha}: the Dirichlet concentration must be positive")
    if min_samples < 0 or min_samples * num_clients > len(labels):
        raise ValueError(
            f"min_samples={min_samples}: {num_clients} clients cannot each get that many of {len(labels)} rows"
        )
    classes = np.unique(labels)
    class_sizes = np.array([np.count_nonzero(labels == c) for c in classes])
    for _ in range(DIRICHLET_MAX_DRAWS):
        # Only the per-class counts are drawn in the loop; rows are assigned once a draw is accepted.
        proportions = rng.dirichlet(np.full(num_clients, alpha), size=len(classes))
        cuts = np.floor(np.cumsum(proportions, axis=1) * class_sizes[:, None]).astype(np.int64)
        cuts[:, -1] = class_sizes  # float round-off must not drop a class's last rows
        counts = np.diff(cuts, axis=1, prepend=0)
        if counts.sum(axis=0).min() >= min_samples:
            return _assign_by_counts(labels, classes, counts, rng)
    raise ValueError(
        f"min_samples={min_samples}: no Dirichlet(alpha={alpha}) draw in {DIRICHLET_MAX_DRAWS} gave each of "
        f"{num_clients} clients that many rows; lower min_samples, raise alpha or use fewer clients"
    )


def _assign_by_counts(
    labels: np.ndarray, classes: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """counts[c, i] random rows of class c go to client i."""
    owner = np.empty(len(labels), dtype=np.int64)
    clients = np.arange(counts.shape[1])
    for c, label in enumerate(classes):
        rows = rng.permutation(np.flatnonzero(labels == label))
        owner[rows] = np.repeat(clients, counts[c])
    return _group_rows(owner, counts.shape[1])


def classes_per_client(labels: np.ndarray, num_clients: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al. 2017) with a hard guarantee.

    Every client gets exactly k distinct labels, and every label goes to floor or ceil of
    num_clients * k / num_labels clients, whose rows of it are equal shards (sizes differ by
    at most one). McMahan's sort-and-cut shards can straddle two labels or give a client two
    shards of one label; cutting shards per label avoids both. When num_clients * k is below
    the number of labels, the labels that get no client are left out. Raises ValueError when
    k exceeds the labels present or a label has fewer rows than clients that need a shard of it.
    """
    labels = np.asarray(labels)
    _check_clients(num_clients, len(labels))
    classes = np.unique(labels)
    if k < 1 or k > len(classes):
        raise ValueError(f"k={k} classes per client: must be between 1 and the {len(classes)} labels present")
    holders = _spread_labels(len(classes), num_clients, k, rng)
    owner = np.full(len(labels), -1, dtype=np.int64)
    for c, label in enumerate(classes):
        if not holders[c]:
            continue
        rows = rng.permutation(np.flatnonzero(labels == label))
        if len(rows) < len(holders[c]):
            raise ValueError(
                f"num_clients={num_clients}, k={k}: label {label} has {len(rows)} rows but "
                f"{len(holders[c])} clients need a shard of it; use fewer clients or a smaller k"
            )
        for shard, client in zip(np.array_split(rows, len(holders[c])), holders[c]):
            owner[shard] = client
    return _group_rows(owner, num_clients)


def _spread_labels(num_labels: int, num_clients: int, k: int, rng: np.random.Generator) -> list[list[int]]:
    """Client lists per label: each client takes the k labels with most remaining slots.

    Slots per label are floor/ceil of num_clients * k / num_labels and sum to num_clients * k.
    No label has more slots than clients left, so at most k labels can sit at that bound and
    taking the k fullest keeps it true: every client finds k distinct labels with free slots.
    """
    total = num_clients * k
    slots = np.full(num_labels, total // num_labels, dtype=np.int64)
    slots[rng.choice(num_labels, total % num_labels, replace=False)] += 1
    holders: list[list[int]] = [[] for _ in range(num_labels)]
    for client in range(num_clients):
        fullest = np.lexsort((rng.random(num_labels), -slots))[:k]  # random tie-break varies the label pairs
        slots[fullest] -= 1
        for label in fullest:
            holders[label].append(client)
    return holders


def natural(users: np.ndarray, max_clients: int | None = None) -> list[np.ndarray]:
    """One client per user, in user-index order. With max_clients, only the users with the most
    rows are kept (ties: lower user index first)."""
    users = np.asarray(users, dtype=np.int64)
    if len(users) == 0:
        raise ValueError("users: the natural partition needs at least one row")
    if max_clients is not None and max_clients < 1:
        raise ValueError(f"max_clients={max_clients}: must be at least 1")
    ids, inverse, sizes = np.unique(users, return_inverse=True, return_counts=True)
    parts = _group_rows(inverse, len(ids))
    if max_clients is None or max_clients >= len(ids):
        return parts
    keep = np.sort(np.lexsort((ids, -sizes))[:max_clients])
    return [parts[i] for i in keep]


def _group_rows(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Row indices per client, ascending; rows owned by -1 belong to no client."""
    rows = np.flatnonzero(owner >= 0)
    order = rows[np.argsort(owner[rows], kind="stable")].astype(np.int64)
    return np.split(order, np.cumsum(np.bincount(owner[rows], minlength=num_clients))[:-1])


def _check_clients(num_clients: int, n_rows: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients={num_clients}: must be at least 1")
    if num_clients > n_rows:
        raise ValueError(f"num_clients={num_clients} exceeds the {n_rows} training rows")
