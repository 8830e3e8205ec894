"""LEAF JSON datasets (FEMNIST, Shakespeare): one record per user, kept as a user index per row.

Layout: `<root>/train/*.json` and `<root>/test/*.json` (or the same under
`<root>/data/`), each file {"users": [...], "num_samples": [...],
"user_data": {user: {"x": [...], "y": [...]}}}. Users are numbered in order of
first appearance in the train files (sorted by file name); every test row goes
to the global test set.

Memory is bounded before parsing: a file over MAX_LEAF_FILE_BYTES is refused before it
is read, and one whose parsed JSON could take more than MAX_LEAF_PARSED_BYTES is refused
before json.loads. That bound comes from counting the file's brackets, separators and
quotes (parsed JSON costs Python objects per value: a 3-byte `[],` becomes a 64-byte
list, so the file size alone bounds nothing); measured, it is 1.4 to 2.7 times what
parsing really takes. A file whose num_samples disagree with its rows is refused.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from raysim.data.errors import DataFormat
from raysim.data.federated import ArrayDataset

LeafDataset = Literal["femnist", "shakespeare"]

# LEAF's ALL_LETTERS (models/utils/language_utils.py). LEAF maps unknown characters
# to -1 via str.find, which silently aliases the last embedding row; here they get
# their own index, OOV_INDEX, so the model sees one extra class.
SHAKESPEARE_VOCABULARY = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
OOV_INDEX = len(SHAKESPEARE_VOCABULARY)
SHAKESPEARE_SEQUENCE_LENGTH = 80
FEMNIST_SIDE = 28
LEAF_CLASSES = {"femnist": 62, "shakespeare": len(SHAKESPEARE_VOCABULARY) + 1}

# LEAF's largest output, all of Shakespeare in one train file, is a few hundred MB
# (4.2 M samples of 80 characters); FEMNIST's files hold at most 100 writers each.
MAX_LEAF_FILE_BYTES = 2**30
MAX_LEAF_PARSED_BYTES = 4 * 2**30
# CPython 3.11 object costs (64-bit), rounded up, for _parsed_bytes_bound.
_CONTAINER_BYTES = 80  # an empty list or dict and its slot in the parent
_VALUE_BYTES = 48  # a number (float 24, int 28+) and its list slot with over-allocation, or a dict entry
_STRING_BYTES = 64  # a str object's header and its slot

_CHAR_TABLE = np.full(128, OOV_INDEX, dtype=np.int64)
_CHAR_TABLE[[ord(c) for c in SHAKESPEARE_VOCABULARY]] = np.arange(len(SHAKESPEARE_VOCABULARY))


class UserDataset(NamedTuple):
    """A centralised dataset whose train rows remember which user they came from."""

    train: ArrayDataset
    test: ArrayDataset
    train_users: np.ndarray  # int64 user index per train row
    num_classes: int


def leaf_format(dataset: LeafDataset) -> DataFormat:
    rows = (
        "784 floats per x row, y in 0..61" if dataset == "femnist"
        else "80-character strings per x row, one character per y"
    )
    return DataFormat(
        expected=f"LEAF JSON files train/*.json and test/*.json (or data/train, data/test) with keys users, "
        f"num_samples, user_data ({rows})",
        obtain=f"generate them with LEAF (https://github.com/TalwalkarLab/leaf): in data/{dataset} run "
        f"./preprocess.sh (e.g. -s niid --sf 0.05 -k 0 -t sample), then point data.path at leaf/data/{dataset}",
    )


def find_leaf_splits(root: Path, fmt: DataFormat) -> tuple[Path, Path]:
    for base in (root, root / "data"):
        if (base / "train").is_dir() and (base / "test").is_dir():
            return base / "train", base / "test"
    problem = "folder does not exist" if not root.is_dir() else "no train/ and test/ folders here or under data/"
    raise fmt.error(root, problem)


def load_leaf(root: Path, dataset: LeafDataset) -> UserDataset:
    """FEMNIST: x float32 (N, 1, 28, 28) as stored. Shakespeare: x int64 (N, 80) character indices."""
    fmt = leaf_format(dataset)
    train_dir, test_dir = find_leaf_splits(root, fmt)
    user_ids: dict[str, int] = {}
    train_x, train_y, train_users = [], [], []
    for user, x, y in _user_records(train_dir, dataset, fmt):
        index = user_ids.setdefault(user, len(user_ids))
        train_x.append(x)
        train_y.append(y)
        train_users.append(np.full(len(y), index, dtype=np.int64))
    test_records = list(_user_records(test_dir, dataset, fmt))
    train = ArrayDataset(np.concatenate(train_x), np.concatenate(train_y))
    test = ArrayDataset(np.concatenate([r[1] for r in test_records]), np.concatenate([r[2] for r in test_records]))
    return UserDataset(train, test, np.concatenate(train_users), LEAF_CLASSES[dataset])


def _user_records(
    folder: Path, dataset: LeafDataset, fmt: DataFormat
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(user, x, y) for every user of every JSON file in `folder`, converted to arrays."""
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise fmt.error(folder, "no *.json files")
    found_rows = False
    for path in paths:
        for user, record, declared in _read_users(path, fmt):
            x, y = _convert(path, user, record, declared, dataset, fmt)
            found_rows = found_rows or len(y) > 0
            yield user, x, y
    if not found_rows:
        raise fmt.error(folder, "the JSON files hold no samples")


def _read_users(path: Path, fmt: DataFormat) -> list[tuple[str, Any, Any]]:
    """(user, record, declared row count or None) for each listed user of one file."""
    tree = _parse_bounded(path, fmt)
    if not (isinstance(tree, dict) and isinstance(tree.get("users"), list) and isinstance(tree.get("user_data"), dict)):
        raise fmt.error(path, "expected an object with a 'users' list and a 'user_data' object")
    users = tree["users"]
    missing = [u for u in users if u not in tree["user_data"]]
    if missing:
        raise fmt.error(path, f"users {missing[:3]} are listed but have no user_data")
    declared = tree.get("num_samples")
    if declared is None:
        declared = [None] * len(users)
    elif not isinstance(declared, list) or len(declared) != len(users):
        raise fmt.error(path, f"num_samples must list one count per user ({len(users)} users)")
    return [(str(u), tree["user_data"][u], n) for u, n in zip(users, declared)]


def _parse_bounded(path: Path, fmt: DataFormat) -> Any:
    """json.loads of the file, refused before reading or parsing when over the limits."""
    try:
        size = path.stat().st_size
        if size > MAX_LEAF_FILE_BYTES:
            raise fmt.error(path, f"{size:,} bytes, over the limit of {MAX_LEAF_FILE_BYTES:,} for one LEAF file "
                            "(MAX_LEAF_FILE_BYTES; LEAF writes files of a few hundred MB at most)")
        raw = path.read_bytes()
    except OSError as exc:
        raise fmt.error(path, f"cannot read: {exc.strerror or exc}") from None
    bound = _parsed_bytes_bound(raw)
    if bound > MAX_LEAF_PARSED_BYTES:
        raise fmt.error(path, f"parsing could take up to {bound:,} bytes of memory (estimated from the file's "
                        f"brackets, separators and quotes), over the limit of {MAX_LEAF_PARSED_BYTES:,} "
                        "(MAX_LEAF_PARSED_BYTES): split the file or check that it is LEAF data")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise fmt.error(path, f"not valid JSON ({exc})") from None
    except RecursionError:
        raise fmt.error(path, "not valid LEAF JSON (nested too deeply)") from None


def _parsed_bytes_bound(raw: bytes) -> int:
    """An upper bound on the memory json.loads(raw) takes, from byte counts alone (fast C loops).

    Every container costs a container and one value, every ',' or ':' one more value,
    every pair of quotes a str; the decoded text and the strings' contents each cost at most
    the file's bytes, four times over if any character is outside ASCII (UCS-4 strings).
    Quotes, commas and brackets inside strings only overcount."""
    containers = raw.count(b"[") + raw.count(b"{")
    values = containers + raw.count(b",") + raw.count(b":")
    strings = raw.count(b'"') // 2
    text = len(raw) * (1 if raw.isascii() else 4)
    return 2 * text + _CONTAINER_BYTES * containers + _VALUE_BYTES * values + _STRING_BYTES * strings


def _convert(
    path: Path, user: str, record: Any, declared: Any, dataset: LeafDataset, fmt: DataFormat
) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(record, dict) or not isinstance(record.get("x"), list) or not isinstance(record.get("y"), list):
        raise fmt.error(path, f"user {user!r}: expected {{'x': [...], 'y': [...]}}")
    xs, ys = record["x"], record["y"]
    if len(xs) != len(ys):
        raise fmt.error(path, f"user {user!r}: {len(xs)} x rows but {len(ys)} labels")
    if declared is not None and declared != len(ys):
        raise fmt.error(path, f"user {user!r}: num_samples declares {declared!r} rows but the file holds {len(ys)}")
    if dataset == "femnist":
        return _femnist_rows(path, user, xs, ys, fmt)
    return _shakespeare_rows(path, user, xs, ys, fmt)


def _femnist_rows(
    path: Path, user: str, xs: list, ys: list, fmt: DataFormat
) -> tuple[np.ndarray, np.ndarray]:
    pixels = FEMNIST_SIDE * FEMNIST_SIDE
    try:
        x = np.asarray(xs, dtype=np.float32).reshape(len(xs), -1) if xs else np.zeros((0, pixels), np.float32)
        y = np.asarray(ys, dtype=np.int64)
    except (TypeError, ValueError):
        raise fmt.error(path, f"user {user!r}: x must be rows of {pixels} numbers and y integers") from None
    if x.shape[1] != pixels:
        raise fmt.error(path, f"user {user!r}: x rows have {x.shape[1]} values, expected {pixels}")
    if y.ndim != 1:
        raise fmt.error(path, f"user {user!r}: y must be a flat list of integers")
    if len(y) and (y.min() < 0 or y.max() >= LEAF_CLASSES["femnist"]):
        raise fmt.error(path, f"user {user!r}: labels span {y.min()}..{y.max()}, outside 0..61")
    return x.reshape(-1, 1, FEMNIST_SIDE, FEMNIST_SIDE), y


def _shakespeare_rows(
    path: Path, user: str, xs: list, ys: list, fmt: DataFormat
) -> tuple[np.ndarray, np.ndarray]:
    if not all(isinstance(s, str) and len(s) == SHAKESPEARE_SEQUENCE_LENGTH for s in xs):
        raise fmt.error(path, f"user {user!r}: every x must be a string of {SHAKESPEARE_SEQUENCE_LENGTH} characters")
    if not all(isinstance(c, str) and len(c) == 1 for c in ys):
        raise fmt.error(path, f"user {user!r}: every y must be a single character")
    x = _char_indices("".join(xs)).reshape(len(xs), SHAKESPEARE_SEQUENCE_LENGTH)
    return x, _char_indices("".join(ys))


def _char_indices(text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    return np.where(codes < len(_CHAR_TABLE), _CHAR_TABLE[np.minimum(codes, len(_CHAR_TABLE) - 1)], OOV_INDEX)
