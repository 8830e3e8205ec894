"""IDX files (MNIST, Fashion-MNIST, EMNIST), plain or gzip-compressed.

An IDX file is a 4-byte magic number (0x00 0x00 <dtype code> <ndim>), ndim
big-endian uint32 dimensions, then the big-endian data. Every declared size is
checked against the bytes actually present, so a truncated download fails here
with its path instead of as a reshape error deep inside training.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from raysim.data.errors import DataFormat
from raysim.data.federated import ArrayDataset

IdxDataset = Literal["mnist", "fashion_mnist", "emnist"]

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_SIDE = 28

# EMNIST split -> classes; 'letters' labels are stored 1..26 and shifted here to 0..25.
EMNIST_CLASSES = {"byclass": 62, "bymerge": 47, "balanced": 47, "letters": 26, "digits": 10, "mnist": 10}
DEFAULT_EMNIST_SPLIT = "balanced"

_TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "emnist": "EMNIST"}
_OBTAIN = {
    "mnist": "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
    "and t10k-labels-idx1-ubyte.gz (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/) into the folder, "
    "or point data.path at a torchvision root that holds MNIST/raw",
    "fashion_mnist": "`apt-get install dataset-fashion-mnist` puts the IDX files in /usr/share/datasets/fashion-mnist; "
    "or download the four *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist (data/fashion) "
    "into the folder and point data.path at it",
    "emnist": "download https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip, unzip it and point data.path at the "
    "folder holding emnist-<split>-*-ubyte.gz (the zip's gzip/ folder, or a torchvision root with EMNIST/raw)",
}


def idx_format(dataset: IdxDataset, emnist_split: str = DEFAULT_EMNIST_SPLIT) -> DataFormat:
    prefix = f"emnist-{emnist_split}-" if dataset == "emnist" else ""
    return DataFormat(
        expected=f"IDX files {prefix}train-images-idx3-ubyte, {prefix}train-labels-idx1-ubyte, "
        f"{prefix}t10k-images-idx3-ubyte, {prefix}t10k-labels-idx1-ubyte (plain or .gz) in the folder, "
        f"its raw/ subfolder or {_TORCHVISION_FOLDER[dataset]}/raw/",
        obtain=_OBTAIN[dataset],
    )


def num_idx_classes(dataset: IdxDataset, emnist_split: str = DEFAULT_EMNIST_SPLIT) -> int:
    return EMNIST_CLASSES[emnist_split] if dataset == "emnist" else 10


def read_idx(path: Path, fmt: DataFormat) -> np.ndarray:
    """The array stored in one IDX file (gzip detected by its magic bytes, not the suffix)."""
    raw = _read_maybe_gzip(path, fmt)
    if len(raw) < 4:
        raise fmt.error(path, f"only {len(raw)} bytes: too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise fmt.error(path, f"bad magic number 0x{raw[:4].hex()}: IDX files start with 0x00 0x00 <dtype> <ndim>")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise fmt.error(path, f"unknown IDX dtype code 0x{code:02x}; known: {known}")
    if ndim == 0:
        raise fmt.error(path, "IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise fmt.error(path, f"truncated header: {ndim} dimensions need {header} bytes, the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    declared = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != declared:
        raise fmt.error(
            path, f"declared dims {dims} need {declared} data bytes but the file holds {len(raw) - header} "
            "(truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _read_maybe_gzip(path: Path, fmt: DataFormat) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fmt.error(path, f"cannot read: {exc.strerror or exc}") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise fmt.error(path, f"corrupt or truncated gzip stream ({exc})") from None


def find_idx_file(root: Path, stem: str, dataset: IdxDataset, fmt: DataFormat) -> Path:
    """`stem` or `stem.gz` in root, root/raw, root/<TorchvisionName>/raw or root/gzip (EMNIST's zip)."""
    folders = [root, root / "raw", root / _TORCHVISION_FOLDER[dataset] / "raw", root / "gzip"]
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    if not root.is_dir():
        raise fmt.error(root, "folder does not exist")
    raise fmt.error(root, f"no {stem}[.gz] in {', '.join(str(f) for f in folders)}")


def load_idx_dataset(
    root: Path, dataset: IdxDataset, emnist_split: str = DEFAULT_EMNIST_SPLIT
) -> tuple[ArrayDataset, ArrayDataset]:
    """Train and test sets: x float32 (N, 1, 28, 28) in [0, 1], y int64."""
    if dataset == "emnist" and emnist_split not in EMNIST_CLASSES:
        raise ValueError(f"emnist_split={emnist_split!r}; known splits: {', '.join(EMNIST_CLASSES)}")
    fmt = idx_format(dataset, emnist_split)
    prefix = f"emnist-{emnist_split}-" if dataset == "emnist" else ""
    num_classes = num_idx_classes(dataset, emnist_split)
    splits = []
    for part in ("train", "t10k"):
        images_path = find_idx_file(root, f"{prefix}{part}-images-idx3-ubyte", dataset, fmt)
        labels_path = find_idx_file(root, f"{prefix}{part}-labels-idx1-ubyte", dataset, fmt)
        images = _checked_images(read_idx(images_path, fmt), images_path, fmt)
        labels = _checked_labels(read_idx(labels_path, fmt), labels_path, fmt, dataset, emnist_split, num_classes)
        if len(images) != len(labels):
            raise fmt.error(labels_path, f"{len(labels)} labels for the {len(images)} images of {images_path.name}")
        if dataset == "emnist":
            images = images.transpose(0, 2, 1)  # EMNIST stores images transposed; make them upright like MNIST
        x = (images.astype(np.float32) / np.float32(255))[:, None, :, :]
        splits.append(ArrayDataset(np.ascontiguousarray(x), labels))
    return splits[0], splits[1]


def _checked_images(images: np.ndarray, path: Path, fmt: DataFormat) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise fmt.error(
            path, f"expected unsigned-byte images of shape (N, {IMAGE_SIDE}, {IMAGE_SIDE}), "
            f"got {images.dtype} {images.shape}"
        )
    return images


def _checked_labels(
    labels: np.ndarray, path: Path, fmt: DataFormat, dataset: IdxDataset, emnist_split: str, num_classes: int
) -> np.ndarray:
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise fmt.error(path, f"expected a 1-D unsigned-byte label vector, got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if dataset == "emnist" and emnist_split == "letters":
        labels -= 1
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise fmt.error(path, f"labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")
    return labels
