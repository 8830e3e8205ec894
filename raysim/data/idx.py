"""IDX files (MNIST, Fashion-MNIST, EMNIST), plain or gzip-compressed.

An IDX file is a 4-byte magic number (0x00 0x00 <dtype code> <ndim>), ndim
big-endian uint32 dimensions, then the big-endian data. The header is read and
checked before the payload: its declared size must fit MAX_IDX_PAYLOAD_BYTES and
what the file can hold (exactly the bytes after the header for a plain file, at most
DEFLATE_MAX_RATIO times the compressed size for gzip), and images must be declared
(N, 28, 28) unsigned bytes. Only then is the payload read, in READ_CHUNK_BYTES
pieces into an array of the declared size, and a stream that yields more or less
than declared is refused. So a gzip bomb or a lying header costs at most the
declared size (itself capped), never the decompressed size, and a truncated
download fails here with its path instead of as a reshape error deep inside training.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal

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


# The largest published IDX file, EMNIST ByClass's training images, holds 547 MB
# (697,932 images of 28 x 28 bytes); twice that leaves room and still refuses a
# header that declares gigabytes.
MAX_IDX_PAYLOAD_BYTES = 2**30
# Deflate cannot expand its input more than 1032-fold (zlib's technical notes),
# so a gzip file of n bytes cannot hold more than this times n.
DEFLATE_MAX_RATIO = 1032
READ_CHUNK_BYTES = 2**20  # decompressed bytes per read: the reader's only temporary

# A header check: (dtype, dims) -> what is wrong with them for the caller, or None.
HeaderCheck = Callable[[np.dtype, tuple[int, ...]], str | None]


def read_idx(path: Path, fmt: DataFormat, check_header: HeaderCheck | None = None) -> np.ndarray:
    """The array stored in one IDX file (gzip detected by its magic bytes, not the suffix).

    Memory is bounded by the declared payload, at most MAX_IDX_PAYLOAD_BYTES: the header
    (and `check_header`, e.g. an image shape) is checked before any payload is read."""
    file_bytes = _file_size(path, fmt)
    with _idx_stream(path, fmt) as (stream, compressed):
        magic = stream.read(4)
        if len(magic) < 4:
            raise fmt.error(path, f"only {len(magic)} bytes: too short for an IDX header")
        if magic[0] != 0 or magic[1] != 0:
            raise fmt.error(path, f"bad magic number 0x{magic.hex()}: IDX files start with 0x00 0x00 <dtype> <ndim>")
        code, ndim = magic[2], magic[3]
        if code not in _IDX_DTYPES:
            known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
            raise fmt.error(path, f"unknown IDX dtype code 0x{code:02x}; known: {known}")
        if ndim == 0:
            raise fmt.error(path, "IDX header declares 0 dimensions")
        header = 4 + 4 * ndim
        packed = stream.read(4 * ndim)
        if len(packed) < 4 * ndim:
            raise fmt.error(path, f"truncated header: {ndim} dimensions need {header} bytes, "
                            f"the file has {4 + len(packed)}")
        dims = struct.unpack(f">{ndim}I", packed)
        dtype = np.dtype(_IDX_DTYPES[code])
        problem = check_header(dtype, dims) if check_header is not None else None
        if problem:
            raise fmt.error(path, problem)
        declared = math.prod(dims) * dtype.itemsize
        _check_declared_size(path, fmt, dims, declared, file_bytes, header, compressed)
        payload = np.empty(declared, dtype=np.uint8)
        got = _read_into(stream, payload)
        if got < declared:
            raise fmt.error(path, f"declared dims {dims} need {declared} data bytes but the file holds {got} "
                            "(truncated or corrupt)")
        if stream.read(1):
            raise fmt.error(path, f"declared dims {dims} need {declared} data bytes but the file holds more "
                            "(truncated or corrupt: trailing data or a header that lies)")
    return payload.view(dtype).reshape(dims)


def _check_declared_size(
    path: Path, fmt: DataFormat, dims: tuple[int, ...], declared: int, file_bytes: int, header: int, compressed: bool
) -> None:
    """Refuse, before allocating, a payload over the cap or larger than the file can hold."""
    after_header = file_bytes - header
    if declared > MAX_IDX_PAYLOAD_BYTES:
        raise fmt.error(path, f"declared dims {dims} need {declared:,} data bytes, over the limit of "
                        f"{MAX_IDX_PAYLOAD_BYTES:,} (MAX_IDX_PAYLOAD_BYTES; twice the largest real IDX file): "
                        "a corrupt header or not an image dataset")
    if not compressed and after_header != declared:
        raise fmt.error(path, f"declared dims {dims} need {declared} data bytes but the file holds {after_header} "
                        "(truncated or corrupt)")
    if compressed and declared > DEFLATE_MAX_RATIO * file_bytes:
        raise fmt.error(path, f"declared dims {dims} need {declared:,} data bytes but a gzip file of "
                        f"{file_bytes:,} bytes holds at most {DEFLATE_MAX_RATIO} times that (truncated or corrupt)")


def _file_size(path: Path, fmt: DataFormat) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise fmt.error(path, f"cannot read: {exc.strerror or exc}") from None


@contextmanager
def _idx_stream(path: Path, fmt: DataFormat) -> Iterator[tuple[BinaryIO, bool]]:
    """The file's decompressed bytes as a stream, and whether it is gzip; errors of a
    corrupt or truncated gzip stream, wherever they surface, become DataErrors."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise fmt.error(path, f"cannot read: {exc.strerror or exc}") from None
    with raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        try:
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    yield stream, True
            else:
                yield raw, False
        except (OSError, EOFError, zlib.error) as exc:
            problem = "corrupt or truncated gzip stream" if compressed else "cannot read"
            raise fmt.error(path, f"{problem} ({exc})") from None


def _read_into(stream: BinaryIO, out: np.ndarray) -> int:
    """Fill `out` from `stream` in bounded pieces; the number of bytes read (less at end of stream)."""
    view = memoryview(out)
    filled = 0
    while filled < len(out):
        n = stream.readinto(view[filled : filled + READ_CHUNK_BYTES])
        if not n:
            break
        filled += n
    return filled


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
        images = read_idx(images_path, fmt, check_header=_image_header)
        labels = _checked_labels(read_idx(labels_path, fmt, check_header=_label_header), labels_path, fmt, dataset,
                                 emnist_split, num_classes)
        if len(images) != len(labels):
            raise fmt.error(labels_path, f"{len(labels)} labels for the {len(images)} images of {images_path.name}")
        if dataset == "emnist":
            images = images.transpose(0, 2, 1)  # EMNIST stores images transposed; make them upright like MNIST
        x = images.astype(np.float32)
        x /= np.float32(255)  # in place: one float32 copy of the images, not two
        x = x[:, None, :, :]
        splits.append(ArrayDataset(np.ascontiguousarray(x), labels))
    return splits[0], splits[1]


def _image_header(dtype: np.dtype, dims: tuple[int, ...]) -> str | None:
    if dtype != np.uint8 or len(dims) != 3 or dims[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        return f"expected unsigned-byte images of shape (N, {IMAGE_SIDE}, {IMAGE_SIDE}), got {dtype} {dims}"
    return None


def _label_header(dtype: np.dtype, dims: tuple[int, ...]) -> str | None:
    if dtype != np.uint8 or len(dims) != 1:
        return f"expected a 1-D unsigned-byte label vector, got {dtype} {dims}"
    return None


def _checked_labels(
    labels: np.ndarray, path: Path, fmt: DataFormat, dataset: IdxDataset, emnist_split: str, num_classes: int
) -> np.ndarray:
    labels = labels.astype(np.int64)
    if dataset == "emnist" and emnist_split == "letters":
        labels -= 1
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise fmt.error(path, f"labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")
    return labels
