"""Hostile dataset files: gzip bombs, lying headers, truncated streams, oversized pickles and JSON.

Each is refused with a DataError naming the file and the limit, quickly, and with memory
far below what the file would have cost (peak resident memory sampled while reading)."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_data_readers import IDX_NAMES, assert_data_error, idx_bytes, write_cifar10, write_idx_set

from conftest import write_leaf
from raysim.benchmarks.scale_run import PeakRss
from raysim.data import leaf
from raysim.data.cifar import MAX_CIFAR_BATCH_BYTES, load_cifar
from raysim.data.errors import DataError
from raysim.data.idx import DEFLATE_MAX_RATIO, MAX_IDX_PAYLOAD_BYTES, load_idx_dataset
from raysim.data.leaf import MAX_LEAF_FILE_BYTES, load_leaf

BOMB_BYTES = 2 * 2**30  # what a bomb decompresses to: twice the IDX payload cap
MEMORY_BOUND = 64 * 2**20  # what reading any hostile file may add to resident memory
TIME_BOUND_S = 2.0
_ZEROS_MEMBER_BYTES = 2**20


def idx_header(dims: tuple[int, ...], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def write_gzip_bomb(path: Path, header: bytes, zero_bytes: int) -> None:
    """header + zero_bytes zeros as one gzip file, built without holding the zeros: gzip
    members concatenate, so one compressed MiB of zeros is written again and again."""
    member = gzip.compress(bytes(_ZEROS_MEMBER_BYTES), compresslevel=9)
    with path.open("wb") as f:
        f.write(gzip.compress(header))
        for _ in range(zero_bytes // _ZEROS_MEMBER_BYTES):
            f.write(member)


def refused_quickly(load, *args) -> tuple[DataError, int]:
    """The DataError `load(*args)` raises, and how much resident memory it added at peak."""
    start = time.perf_counter()
    with PeakRss(interval_s=0.001) as memory, pytest.raises(DataError) as excinfo:
        load(*args)
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_BOUND_S, f"refused after {elapsed:.1f} s"
    growth = memory.peak - memory.start
    assert growth < MEMORY_BOUND, f"reading took {growth / 2**20:.0f} MiB"
    return excinfo, growth


# ---------------------------------------------------------------- IDX


def idx_set_with(tmp_path: Path, key: str) -> Path:
    """A valid four-file IDX set whose `key` file the test then replaces."""
    write_idx_set(tmp_path, np.random.default_rng(0))
    path = tmp_path / IDX_NAMES[key]
    path.unlink()
    return tmp_path / (IDX_NAMES[key] + ".gz")


def test_the_bomb_really_decompresses_to_its_size(tmp_path):
    path = tmp_path / "bomb.gz"
    write_gzip_bomb(path, idx_header((10, 28, 28)), 64 * 2**20)
    assert path.stat().st_size < 2**20  # a thousandfold bomb
    total = 0
    with gzip.open(path) as f:
        while chunk := f.read(2**22):
            total += len(chunk)
    assert total == 16 + 64 * 2**20


def test_gzip_bomb_declaring_more_than_the_cap_is_refused_before_decompressing(tmp_path):
    path = idx_set_with(tmp_path, "train_images")
    images = BOMB_BYTES // (28 * 28)
    write_gzip_bomb(path, idx_header((images, 28, 28)), BOMB_BYTES)
    excinfo, _ = refused_quickly(load_idx_dataset, tmp_path, "fashion_mnist")
    assert_data_error(excinfo, path, f"{MAX_IDX_PAYLOAD_BYTES:,}", "MAX_IDX_PAYLOAD_BYTES", "corrupt header")


def test_gzip_bomb_behind_a_small_header_stops_after_the_declared_bytes(tmp_path):
    path = idx_set_with(tmp_path, "train_images")
    write_gzip_bomb(path, idx_header((6, 28, 28)), BOMB_BYTES)
    excinfo, _ = refused_quickly(load_idx_dataset, tmp_path, "mnist")
    assert_data_error(excinfo, path, "need 4704 data bytes but the file holds more", "header that lies")


def test_header_declaring_more_than_a_gzip_file_can_hold_is_refused_before_allocating(tmp_path):
    path = idx_set_with(tmp_path, "train_images")
    dims = (1_000_000, 28, 28)  # 784 MB, under the cap, from a file of a few hundred bytes
    path.write_bytes(gzip.compress(idx_header(dims) + bytes(6 * 28 * 28)))
    excinfo, _ = refused_quickly(load_idx_dataset, tmp_path, "mnist")
    assert_data_error(excinfo, path, f"holds at most {DEFLATE_MAX_RATIO} times that", "784,000,000")


def test_gzip_stream_shorter_than_its_header_declares(tmp_path):
    path = idx_set_with(tmp_path, "train_images")
    images = np.random.default_rng(7).integers(0, 256, (100, 28, 28), dtype=np.uint8)  # incompressible
    path.write_bytes(gzip.compress(idx_header((1000, 28, 28)) + images.tobytes()))
    excinfo, _ = refused_quickly(load_idx_dataset, tmp_path, "mnist")
    assert_data_error(excinfo, path, "need 784000 data bytes but the file holds 78400", "truncated or corrupt")


def test_plain_file_header_over_the_cap_is_refused_before_reading(tmp_path):
    write_idx_set(tmp_path, np.random.default_rng(1))
    path = tmp_path / IDX_NAMES["train_images"]
    path.write_bytes(idx_header((3_000_000, 28, 28)) + bytes(6 * 28 * 28))
    excinfo, _ = refused_quickly(load_idx_dataset, tmp_path, "mnist")
    assert_data_error(excinfo, path, "MAX_IDX_PAYLOAD_BYTES")


def test_image_shape_is_checked_from_the_header_before_the_payload(tmp_path):
    path = idx_set_with(tmp_path, "train_images")
    write_gzip_bomb(path, idx_header((10, 4096, 4096)), BOMB_BYTES)  # 168 MB declared, 2 GiB of zeros
    excinfo, _ = refused_quickly(load_idx_dataset, tmp_path, "mnist")
    assert_data_error(excinfo, path, "shape (N, 28, 28)", "(10, 4096, 4096)")


def test_label_header_must_be_a_byte_vector(tmp_path):
    write_idx_set(tmp_path, np.random.default_rng(2))
    path = tmp_path / IDX_NAMES["train_labels"]
    path.write_bytes(idx_bytes(np.zeros((6, 2), dtype=np.uint8)))
    with pytest.raises(DataError) as excinfo:
        load_idx_dataset(tmp_path, "mnist")
    assert_data_error(excinfo, path, "1-D unsigned-byte label vector", "(6, 2)")


def test_gzip_header_cut_mid_stream(tmp_path):
    path = idx_set_with(tmp_path, "test_labels")
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # a gzip stream that never ends
    path.write_bytes(compressor.compress(idx_header((4,))[:6]) + compressor.flush(zlib.Z_SYNC_FLUSH))
    with pytest.raises(DataError) as excinfo:
        load_idx_dataset(tmp_path, "mnist")
    assert_data_error(excinfo, path, "gzip")


# ---------------------------------------------------------------- CIFAR


class HugeArray:
    """Pickles as numpy's own _reconstruct call with a shape of `nbytes` bytes: what a real
    pickle does with shape (0,), asking numpy to allocate before any data is read."""

    def __init__(self, shape: tuple[int, ...], dtype: bytes = b"B"):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, self.shape, self.dtype)


def test_pickle_declaring_a_huge_array_is_refused_before_numpy_allocates(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(3))
    path = tmp_path / "data_batch_2"
    rows = 2**32 // 3072  # a 4 GiB uint8 (N, 3072) array, 17 GiB once converted to float32
    path.write_bytes(pickle.dumps({"data": HugeArray((rows, 3072)), "labels": HugeArray((rows,))}, protocol=2))
    assert path.stat().st_size < 500
    excinfo, _ = refused_quickly(load_cifar, tmp_path, "cifar10")
    assert_data_error(excinfo, path, f"shape ({rows}, 3072)", f"larger than the {path.stat().st_size:,}-byte file")


def test_pickle_rebuilding_bytes_with_another_codec_is_refused(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(4))
    path = tmp_path / "test_batch"
    # protocol 0 spells a global and a call by hand: _codecs.encode("x" * 1000, "base64")
    path.write_bytes(b"c_codecs\nencode\n(V" + b"x" * 1000 + b"\nVbase64\ntR.")
    with pytest.raises(DataError) as excinfo:
        load_cifar(tmp_path, "cifar10")
    assert_data_error(excinfo, path, "codec 'base64'", "latin-1")


def test_cifar_batch_over_the_size_limit_is_refused_before_reading(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(5))
    path = tmp_path / "data_batch_4"
    with path.open("r+b") as f:
        f.truncate(MAX_CIFAR_BATCH_BYTES + 1)  # sparse: takes no disk
    excinfo, _ = refused_quickly(load_cifar, tmp_path, "cifar10")
    assert_data_error(excinfo, path, f"over the limit of {MAX_CIFAR_BATCH_BYTES:,}", "MAX_CIFAR_BATCH_BYTES")


# ---------------------------------------------------------------- LEAF


def leaf_with_train_file(tmp_path: Path, content: bytes) -> Path:
    write_leaf(tmp_path, "test", "a.json", {"u": (["a" * 80], ["b"])})
    (tmp_path / "train").mkdir()
    path = tmp_path / "train" / "a.json"
    path.write_bytes(content)
    return path


def test_leaf_file_over_the_size_limit_is_refused_before_reading(tmp_path):
    path = leaf_with_train_file(tmp_path, b"")
    with path.open("r+b") as f:
        f.truncate(MAX_LEAF_FILE_BYTES + 1)
    excinfo, _ = refused_quickly(load_leaf, tmp_path, "shakespeare")
    assert_data_error(excinfo, path, f"over the limit of {MAX_LEAF_FILE_BYTES:,}", "MAX_LEAF_FILE_BYTES")


def test_json_that_would_parse_into_too_many_objects_is_refused_before_parsing(tmp_path, monkeypatch):
    # 3 MB of empty lists parse into 67 MB of list objects: a JSON bomb, scaled down with its limit.
    limit = 40 * 2**20
    monkeypatch.setattr(leaf, "MAX_LEAF_PARSED_BYTES", limit)
    bomb = b'{"users": ["u"], "user_data": {"u": {"x": [' + b"[]," * 1_000_000 + b'[]], "y": []}}}'
    path = leaf_with_train_file(tmp_path, bomb)
    excinfo, growth = refused_quickly(load_leaf, tmp_path, "shakespeare")
    assert_data_error(excinfo, path, f"over the limit of {limit:,}", "MAX_LEAF_PARSED_BYTES")
    assert growth < 30 * 2**20  # the file read once, never parsed


@pytest.mark.parametrize("content", [
    b"[" + b"[]," * 200_000 + b"[]]",
    b"[" + b"{}," * 200_000 + b"{}]",
    b"[" + b"1e1," * 200_000 + b"1]",
    b"[" + b'"ab",' * 200_000 + b'"a"]',
    b"[" + '"\U0001F600",'.encode() * 200_000 + b'"a"]',
    b"{" + b",".join(b'"k%d":%d' % (i, i * 1000) for i in range(200_000)) + b"}",
    json.dumps({"users": ["u"], "user_data": {"u": {"x": np.random.default_rng(6).random((50, 784)).tolist(),
                                                          "y": list(range(50))}}}).encode(),
    json.dumps({"users": ["u"], "user_data": {"u": {"x": ["To be, or not to be: that is the question."] * 20_000,
                                                          "y": ["a"] * 20_000}}}).encode(),
], ids=["lists", "dicts", "floats", "strings", "wide-strings", "dict-entries", "femnist", "shakespeare"])
def test_parsed_size_bound_is_above_what_parsing_takes(content):
    tracemalloc.start()
    parsed = json.loads(content)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del parsed
    bound = leaf._parsed_bytes_bound(content)
    assert peak <= bound <= 3 * peak


def test_leaf_num_samples_that_lie_are_refused(tmp_path):
    tree = {"users": ["u"], "num_samples": [1000], "user_data": {"u": {"x": ["a" * 80], "y": ["b"]}}}
    path = leaf_with_train_file(tmp_path, json.dumps(tree).encode())
    with pytest.raises(DataError) as excinfo:
        load_leaf(tmp_path, "shakespeare")
    assert_data_error(excinfo, path, "num_samples declares 1000 rows but the file holds 1")
    tree["num_samples"] = [1, 2]
    path.write_text(json.dumps(tree))
    with pytest.raises(DataError) as excinfo:
        load_leaf(tmp_path, "shakespeare")
    assert_data_error(excinfo, path, "one count per user (1 users)")


def test_deeply_nested_json_is_refused_not_a_recursion_traceback(tmp_path):
    path = leaf_with_train_file(tmp_path, b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(DataError) as excinfo:
        load_leaf(tmp_path, "shakespeare")
    assert_data_error(excinfo, path, "nested too deeply")


def test_the_limits_are_documented():
    doc = (Path(__file__).parent.parent / "docs" / "data-limits.md").read_text()
    for name in ("MAX_IDX_PAYLOAD_BYTES", "DEFLATE_MAX_RATIO", "MAX_CIFAR_BATCH_BYTES", "MAX_LEAF_FILE_BYTES",
                 "MAX_LEAF_PARSED_BYTES"):
        assert name in doc
    assert os.path.basename(__file__) in doc  # the tests that hold the limits to their word
