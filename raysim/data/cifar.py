"""CIFAR-10 / CIFAR-100 python-pickle batches, read without trusting the pickle.

A pickle can name any importable callable and run it while loading, so the
batches go through an Unpickler that resolves only the few globals a numpy
array needs; anything else (os.system, eval, ...) is refused with a DataError.

Memory is bounded before and while parsing: a batch file over MAX_CIFAR_BATCH_BYTES
is refused before it is read, an array the pickle declares may not hold more bytes
than the file itself (numpy's _reconstruct allocates whatever shape it is given, so a
few bytes could otherwise ask for terabytes), and bytes are rebuilt only from latin-1
text (the one codec real batches use, which never grows its input).
"""
from __future__ import annotations

import codecs
import io
import math
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np

from raysim.data.errors import DataError, DataFormat
from raysim.data.federated import ArrayDataset

try:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy < 2 has no numpy._core
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

CifarDataset = Literal["cifar10", "cifar100"]

# Pickles name numpy's internals by the module path of the numpy that wrote them.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    # Python 3 writes bytes as _codecs.encode(str, 'latin1') under protocols 0-2.
    ("_codecs", "encode"): codecs.encode,
}

# CIFAR-100's training pickle, the largest batch, is about 160 MB (50,000 images of
# 3,072 bytes plus labels and file names); three times that leaves room.
MAX_CIFAR_BATCH_BYTES = 512 * 2**20

_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}
_PIXELS = 3 * 32 * 32


def cifar_format(dataset: CifarDataset) -> DataFormat:
    folder, train, test, labels_key, _ = _LAYOUT[dataset]
    archive = "cifar-10-python.tar.gz" if dataset == "cifar10" else "cifar-100-python.tar.gz"
    return DataFormat(
        expected=f"python pickles {folder}/{{{', '.join(train + test)}}} (dicts with 'data': uint8 (N, 3072) "
        f"and '{labels_key}'), under the given folder or in it directly",
        obtain=f"download https://www.cs.toronto.edu/~kriz/{archive} and extract it (tar xzf {archive}) "
        f"into the folder, giving {folder}/",
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path, fmt: DataFormat):
        # latin1 decodes the Python 2 strings of the original CIFAR files into what numpy expects.
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._path = path
        self._fmt = fmt
        self._max_array_bytes = len(data)

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise self._fmt.error(
                self._path, f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays, lists and "
                "dicts (the file is corrupt, not a CIFAR batch, or malicious)"
            )
        if allowed is _reconstruct:
            return self._bounded_reconstruct
        if allowed is codecs.encode:
            return self._latin1_encode
        return allowed

    def _bounded_reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """numpy's _reconstruct, refusing a shape whose bytes the file could not fill (real
        pickles pass shape (0,) and fill the array from the file's bytes afterwards)."""
        try:
            nbytes = math.prod(int(n) for n in np.atleast_1d(shape)) * np.dtype(dtype).itemsize
        except (TypeError, ValueError):
            nbytes = None
        if nbytes is None or nbytes > self._max_array_bytes:
            raise self._fmt.error(
                self._path, f"the pickle declares an array of shape {shape!r} and dtype {dtype!r}, larger than the "
                f"{self._max_array_bytes:,}-byte file could fill (corrupt or malicious)"
            )
        return _reconstruct(subtype, shape, dtype)

    def _latin1_encode(self, text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        if codecs.lookup(encoding).name != "iso8859-1":
            raise self._fmt.error(self._path, f"refusing _codecs.encode with codec {encoding!r}: CIFAR batches "
                                  "rebuild bytes only from latin-1 text (corrupt or malicious)")
        return codecs.encode(text, encoding, errors)


def load_pickle_batch(path: Path, fmt: DataFormat) -> dict[str, Any]:
    """One batch as a dict with str keys (the Python 2 originals and re-pickled copies differ).

    Files over MAX_CIFAR_BATCH_BYTES are refused before they are read."""
    try:
        size = path.stat().st_size
        if size > MAX_CIFAR_BATCH_BYTES:
            raise fmt.error(path, f"{size:,} bytes, over the limit of {MAX_CIFAR_BATCH_BYTES:,} for one batch "
                            "(MAX_CIFAR_BATCH_BYTES; about three times CIFAR-100's training pickle): not a CIFAR batch")
        data = path.read_bytes()
    except OSError as exc:
        raise fmt.error(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        batch = _NumpyOnlyUnpickler(data, path, fmt).load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle fails in many ways (EOFError, KeyError, struct.error, ...)
        raise fmt.error(path, f"not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise fmt.error(path, f"the pickle holds a {type(batch).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _batch_arrays(path: Path, fmt: DataFormat, labels_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle_batch(path, fmt)
    if "data" not in batch or labels_key not in batch:
        raise fmt.error(path, f"missing key 'data' or '{labels_key}' (found {sorted(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise fmt.error(path, f"'data' must be uint8 (N, {_PIXELS}), got {shape}")
    try:
        labels = np.asarray(batch[labels_key], dtype=np.int64)
    except (TypeError, ValueError):
        raise fmt.error(path, f"'{labels_key}' is not a list of integers") from None
    if labels.shape != (len(data),):
        raise fmt.error(path, f"'{labels_key}' has shape {labels.shape}, expected ({len(data)},)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise fmt.error(path, f"labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")
    return data, labels


def load_cifar(root: Path, dataset: CifarDataset) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test sets: x float32 (N, 3, 32, 32) in [0, 1], y int64 (CIFAR-100: fine labels)."""
    folder_name, train_files, test_files, labels_key, num_classes = _LAYOUT[dataset]
    fmt = cifar_format(dataset)
    folder = root / folder_name if (root / folder_name).is_dir() else root
    if not folder.is_dir():
        raise fmt.error(root, "folder does not exist")
    splits = []
    for names in (train_files, test_files):
        paths = [folder / name for name in names]
        for path in paths:
            if not path.is_file():
                raise fmt.error(path, "file not found")
        arrays = [_batch_arrays(path, fmt, labels_key, num_classes) for path in paths]
        data = np.concatenate([a[0] for a in arrays])
        x = data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255)
        splits.append(ArrayDataset(x, np.concatenate([a[1] for a in arrays])))
    return splits[0], splits[1]


def num_cifar_classes(dataset: CifarDataset) -> int:
    return _LAYOUT[dataset][4]
