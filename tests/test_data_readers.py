"""Dataset readers and the loader: round trips on tiny files, and clear errors on bad ones."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import write_leaf
from raysim.config import DataConfig, SyntheticConfig
from raysim.data.cifar import load_cifar
from raysim.data.errors import DataError
from raysim.data.federated import ArrayDataset
from raysim.data.idx import idx_format, load_idx_dataset, read_idx
from raysim.data.leaf import OOV_INDEX, SHAKESPEARE_VOCABULARY, load_leaf
from raysim.data.loading import DATA_DIR_ENV, default_data_path, load_federated_dataset
from raysim.data.synthetic import generate_synthetic

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# ---------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder: Path, rng: np.random.Generator, *, n_train=6, n_test=4, compress=False, prefix=""):
    """Four IDX files; returns the uint8 arrays written, keyed like IDX_NAMES."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, array in arrays.items():
        data = idx_bytes(array)
        name = prefix + IDX_NAMES[key]
        if compress:
            data, name = gzip.compress(data), name + ".gz"
        (folder / name).write_bytes(data)
    return arrays


def check_idx_round_trip(train, test, arrays):
    assert train.x.shape == (len(arrays["train_labels"]), 1, 28, 28) and train.x.dtype == np.float32
    assert test.x.shape == (len(arrays["test_labels"]), 1, 28, 28)
    assert train.y.dtype == np.int64 and test.y.dtype == np.int64
    np.testing.assert_allclose(train.x[:, 0] * 255, arrays["train_images"], atol=1e-3)
    np.testing.assert_allclose(test.x[:, 0] * 255, arrays["test_images"], atol=1e-3)
    np.testing.assert_array_equal(train.y, arrays["train_labels"])
    np.testing.assert_array_equal(test.y, arrays["test_labels"])
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    arrays = write_idx_set(tmp_path, np.random.default_rng(0), compress=compress)
    check_idx_round_trip(*load_idx_dataset(tmp_path, "mnist"), arrays)


def test_gzip_is_detected_by_magic_bytes_not_suffix(tmp_path):
    arrays = write_idx_set(tmp_path, np.random.default_rng(1))
    for name in IDX_NAMES.values():  # gzip content under the plain name
        path = tmp_path / name
        path.write_bytes(gzip.compress(path.read_bytes()))
    check_idx_round_trip(*load_idx_dataset(tmp_path, "mnist"), arrays)


@pytest.mark.parametrize("subfolder", ["FashionMNIST/raw", "raw"])
def test_idx_torchvision_layouts(tmp_path, subfolder):
    arrays = write_idx_set(tmp_path / subfolder, np.random.default_rng(2), compress=True)
    check_idx_round_trip(*load_idx_dataset(tmp_path, "fashion_mnist"), arrays)


def test_idx_wider_dtypes_are_decoded_big_endian(tmp_path):
    values = np.array([[1, -2], [300, 70000]], dtype=np.int32)
    path = tmp_path / "ints-idx2-int"
    path.write_bytes(idx_bytes(values, code=0x0C))
    np.testing.assert_array_equal(read_idx(path, idx_format("mnist")), values)


def test_emnist_images_are_transposed_upright(tmp_path):
    rng = np.random.default_rng(3)
    upright = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labels = np.array([0, 46, 12], dtype=np.uint8)
    folder = tmp_path / "EMNIST" / "raw"
    folder.mkdir(parents=True)
    for part in ("train", "t10k"):
        (folder / f"emnist-balanced-{part}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(upright.transpose(0, 2, 1).copy()))
        )
        (folder / f"emnist-balanced-{part}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    train, test = load_idx_dataset(tmp_path, "emnist")
    np.testing.assert_allclose(train.x[:, 0] * 255, upright, atol=1e-3)
    np.testing.assert_array_equal(test.y, labels)


def assert_data_error(excinfo, path: Path, *fragments: str):
    message = str(excinfo.value)
    assert str(path) in message
    assert "expected:" in message and "to obtain it:" in message
    for fragment in fragments:
        assert fragment in message


def corrupt_bad_magic(data: bytes) -> bytes:
    return b"\x01\x02" + data[2:]


def corrupt_dtype(data: bytes) -> bytes:
    return data[:2] + b"\x07" + data[3:]


def corrupt_truncate(data: bytes) -> bytes:
    return data[:-5]


def corrupt_trailing(data: bytes) -> bytes:
    return data + b"\x00"


@pytest.mark.parametrize(
    "corrupt, fragment",
    [
        (corrupt_bad_magic, "bad magic number"),
        (corrupt_dtype, "dtype code 0x07"),
        (corrupt_truncate, "truncated or corrupt"),
        (corrupt_trailing, "truncated or corrupt"),
        (lambda data: data[:6], "truncated header"),
    ],
)
def test_corrupt_idx_names_path_and_format(tmp_path, corrupt, fragment):
    write_idx_set(tmp_path, np.random.default_rng(4))
    path = tmp_path / IDX_NAMES["train_images"]
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError) as excinfo:
        load_idx_dataset(tmp_path, "fashion_mnist")
    assert_data_error(excinfo, path, fragment, "train-images-idx3-ubyte", "apt-get install dataset-fashion-mnist")


def test_truncated_gzip_names_path(tmp_path):
    write_idx_set(tmp_path, np.random.default_rng(5), compress=True)
    path = tmp_path / (IDX_NAMES["test_labels"] + ".gz")
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError) as excinfo:
        load_idx_dataset(tmp_path, "mnist")
    assert_data_error(excinfo, path, "gzip")


def test_missing_idx_file_and_folder(tmp_path):
    write_idx_set(tmp_path, np.random.default_rng(6))
    (tmp_path / IDX_NAMES["test_images"]).unlink()
    with pytest.raises(DataError) as excinfo:
        load_idx_dataset(tmp_path, "mnist")
    assert_data_error(excinfo, tmp_path, "t10k-images-idx3-ubyte")
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as excinfo:
        load_idx_dataset(missing, "fashion_mnist")
    assert_data_error(excinfo, missing, "does not exist", "apt-get install dataset-fashion-mnist")


def test_idx_label_checks(tmp_path):
    write_idx_set(tmp_path, np.random.default_rng(7))
    labels_path = tmp_path / IDX_NAMES["train_labels"]
    labels_path.write_bytes(idx_bytes(np.array([0, 1, 2], dtype=np.uint8)))  # 3 labels for 6 images
    with pytest.raises(DataError, match="3 labels for the 6 images") as excinfo:
        load_idx_dataset(tmp_path, "mnist")
    assert_data_error(excinfo, labels_path)
    labels_path.write_bytes(idx_bytes(np.array([0, 1, 2, 3, 4, 12], dtype=np.uint8)))
    with pytest.raises(DataError, match="outside 0..9"):
        load_idx_dataset(tmp_path, "mnist")


def test_data_error_survives_pickling(tmp_path):
    error = DataError(tmp_path, "broken", expected="IDX", obtain="download it")
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error) and clone.path == tmp_path and clone.obtain == "download it"


def test_real_fashion_mnist():
    if not FASHION_MNIST.is_dir() and not os.environ.get("CI"):
        pytest.skip(f"{FASHION_MNIST} missing: apt-get install dataset-fashion-mnist")
    train, test = load_idx_dataset(FASHION_MNIST, "fashion_mnist")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == np.float32 and 0.0 <= train.x.min() and train.x.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(train.y), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(test.y), np.full(10, 1000))


# ---------------------------------------------------------------- CIFAR


def write_cifar10(folder: Path, rng: np.random.Generator, *, protocol=pickle.HIGHEST_PROTOCOL, bytes_keys=False):
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 2).tolist()
        batch = {"batch_label": "tiny", "data": data, "labels": labels, "filenames": [b"a.png", b"b.png"]}
        if bytes_keys:
            batch = {key.encode(): value for key, value in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_round_trip_from_root_and_folder(tmp_path, protocol):
    written = write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(8), protocol=protocol)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        train, test = load_cifar(root, "cifar10")
        assert train.x.shape == (10, 3, 32, 32) and test.x.shape == (2, 3, 32, 32)
        assert train.x.dtype == np.float32 and train.y.dtype == np.int64
        first, labels = written["data_batch_1"]
        np.testing.assert_allclose(train.x[:2] * 255, first.reshape(2, 3, 32, 32), atol=1e-3)
        np.testing.assert_array_equal(test.y, written["test_batch"][1])
        np.testing.assert_array_equal(train.y[:2], labels)


def python2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the real files: numpy.core paths, array bytes as a py2 str."""
    rows, cols = data.shape
    return (
        b"\x80\x02}(U\x04datacnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        + b"(K\x01" + struct.pack("<BHBH", 0x4D, rows, 0x4D, cols) + b"\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
        + b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T" + struct.pack("<I", data.size)
        + data.tobytes() + b"tbU\x06labels](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    )


def test_cifar_python2_pickles_are_read(tmp_path):
    rng = np.random.default_rng(18)
    write_cifar10(tmp_path, rng)
    data, labels = rng.integers(0, 256, (3, 3072), dtype=np.uint8), [7, 0, 9]
    (tmp_path / "test_batch").write_bytes(python2_cifar_pickle(data, labels))
    _, test = load_cifar(tmp_path, "cifar10")
    np.testing.assert_allclose(test.x * 255, data.reshape(3, 3, 32, 32), atol=1e-3)
    np.testing.assert_array_equal(test.y, labels)


def test_cifar_bytes_keys_are_accepted(tmp_path):
    written = write_cifar10(tmp_path, np.random.default_rng(9), bytes_keys=True)
    _, test = load_cifar(tmp_path, "cifar10")
    np.testing.assert_array_equal(test.y, written["test_batch"][1])


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(10)
    for name, n in (("train", 4), ("test", 3)):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": [99, 0, 57, 3][:n], "coarse_labels": [1] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    train, test = load_cifar(tmp_path, "cifar100")
    assert train.x.shape == (4, 3, 32, 32) and test.x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(train.y, [99, 0, 57, 3])


class RunsShell:
    """Pickles into a call of os.system: the classic malicious pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsEval:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize("payload", ["shell", "eval"])
def test_malicious_cifar_pickle_is_refused(tmp_path, payload):
    write_cifar10(tmp_path, np.random.default_rng(11))
    marker = tmp_path / "pwned"
    evil = RunsShell(marker) if payload == "shell" else CallsEval()
    path = tmp_path / "data_batch_3"
    path.write_bytes(pickle.dumps({"data": evil, "labels": []}))
    with pytest.raises(DataError) as excinfo:
        load_cifar(tmp_path, "cifar10")
    assert_data_error(excinfo, path, "refusing to load")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "not a readable pickle"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]})[:-30], "not a readable pickle"),
        (pickle.dumps([1, 2]), "not a dict"),
        (pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [1, 2]}), "uint8 (N, 3072)"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}), "expected (2,)"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]}), "outside 0..9"),
    ],
)
def test_corrupt_cifar_names_path_and_format(tmp_path, content, fragment):
    write_cifar10(tmp_path, np.random.default_rng(12))
    path = tmp_path / "test_batch"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        load_cifar(tmp_path, "cifar10")
    assert_data_error(excinfo, path, fragment, "data_batch_1", "cifar-10-python.tar.gz")


def test_missing_cifar_batch(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(13))
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(DataError) as excinfo:
        load_cifar(tmp_path, "cifar10")
    assert_data_error(excinfo, tmp_path / "data_batch_5", "file not found")


# ---------------------------------------------------------------- LEAF


def femnist_rows(rng, n):
    return rng.random((n, 784)).round(3).tolist(), rng.integers(0, 62, n).tolist()


@pytest.mark.parametrize("nested", [False, True])
def test_femnist_users_and_shapes(tmp_path, nested):
    rng = np.random.default_rng(14)
    root = tmp_path / "data" if nested else tmp_path
    alice, bob, carol = femnist_rows(rng, 3), femnist_rows(rng, 2), femnist_rows(rng, 4)
    write_leaf(root, "train", "a.json", {"f_alice": alice, "f_bob": bob})
    write_leaf(root, "train", "b.json", {"f_carol": carol})
    write_leaf(root, "test", "a.json", {"f_alice": femnist_rows(rng, 1), "f_bob": femnist_rows(rng, 2)})
    data = load_leaf(tmp_path, "femnist")
    assert data.train.x.shape == (9, 1, 28, 28) and data.train.x.dtype == np.float32
    assert data.test.x.shape == (3, 1, 28, 28) and data.num_classes == 62
    np.testing.assert_array_equal(data.train_users, [0, 0, 0, 1, 1, 2, 2, 2, 2])
    np.testing.assert_allclose(data.train.x[5].reshape(-1), carol[0][0], rtol=1e-6)
    np.testing.assert_array_equal(data.train.y, alice[1] + bob[1] + carol[1])


def test_shakespeare_characters_map_to_leaf_vocabulary(tmp_path):
    line = ("To be, or not to be: that is the question.\n" * 2)[:80]
    odd = "é" + line[1:]  # not in LEAF's vocabulary
    write_leaf(tmp_path, "train", "s.json", {"HAMLET": ([line, odd], ["W", "~"])})
    write_leaf(tmp_path, "test", "s.json", {"HAMLET": ([line], [" "])})
    data = load_leaf(tmp_path, "shakespeare")
    assert data.train.x.shape == (2, 80) and data.train.x.dtype == np.int64
    assert data.num_classes == len(SHAKESPEARE_VOCABULARY) + 1 == 81
    assert "".join(SHAKESPEARE_VOCABULARY[i] for i in data.train.x[0]) == line
    assert data.train.x[1, 0] == OOV_INDEX and (data.train.x[1, 1:] == data.train.x[0, 1:]).all()
    np.testing.assert_array_equal(data.train.y, [SHAKESPEARE_VOCABULARY.index("W"), OOV_INDEX])
    np.testing.assert_array_equal(data.test.y, [SHAKESPEARE_VOCABULARY.index(" ")])


@pytest.mark.parametrize(
    "users, fragment",
    [
        ({"u": (["short"], ["a"])}, "80 characters"),
        ({"u": (["a" * 80], ["ab"])}, "single character"),
        ({"u": (["a" * 80, "b" * 80], ["a"])}, "2 x rows but 1 labels"),
    ],
)
def test_bad_shakespeare_rows(tmp_path, users, fragment):
    write_leaf(tmp_path, "train", "s.json", users)
    write_leaf(tmp_path, "test", "s.json", {"u": (["a" * 80], ["a"])})
    with pytest.raises(DataError) as excinfo:
        load_leaf(tmp_path, "shakespeare")
    assert_data_error(excinfo, tmp_path / "train" / "s.json", fragment, "LEAF JSON")


def test_broken_leaf_json_and_layout(tmp_path):
    rng = np.random.default_rng(15)
    write_leaf(tmp_path, "train", "a.json", {"u": femnist_rows(rng, 2)})
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "a.json").write_text('{"users": ["u"], "user_data": {')
    with pytest.raises(DataError) as excinfo:
        load_leaf(tmp_path, "femnist")
    assert_data_error(excinfo, tmp_path / "test" / "a.json", "not valid JSON", "preprocess.sh")
    with pytest.raises(DataError) as excinfo:
        load_leaf(tmp_path / "train", "femnist")
    assert_data_error(excinfo, tmp_path / "train", "no train/ and test/")


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_and_shaped():
    cfg = SyntheticConfig(dimension=7, num_classes=4, test_fraction=0.25)
    first = generate_synthetic(cfg, 12, np.random.default_rng(0))
    again = generate_synthetic(cfg, 12, np.random.default_rng(0))
    other = generate_synthetic(cfg, 12, np.random.default_rng(1))
    np.testing.assert_array_equal(first.train.x, again.train.x)
    np.testing.assert_array_equal(first.test.y, again.test.y)
    assert first.train.x.shape != other.train.x.shape or not np.array_equal(first.train.x, other.train.x)
    assert first.train.x.dtype == np.float32 and first.train.x.shape[1] == 7 and first.num_classes == 4
    per_user_train = np.bincount(first.train_users, minlength=12)
    assert (per_user_train > 0).all() and len(per_user_train) == 12
    total = len(first.train) + len(first.test)
    assert 12 * cfg.min_samples <= total <= 12 * cfg.max_samples
    assert abs(len(first.test) / total - 0.25) < 0.05


def test_synthetic_labels_are_learnable():
    cfg = SyntheticConfig(dimension=5, num_classes=3, mean_samples=7.0)  # ~1000 rows per user
    data = generate_synthetic(cfg, 10, np.random.default_rng(2))
    assert len(np.unique(data.train.y)) == 3
    # Labels are a linear function of x per user: least squares on one user's one-hot labels
    # must beat always guessing that user's most common label.
    # (on the user whose labels are most mixed, so the majority guess is not already perfect)
    def majority_share(u):
        return np.bincount(data.train.y[data.train_users == u]).max() / np.sum(data.train_users == u)

    rows = data.train_users == min(np.unique(data.train_users), key=majority_share)
    x, y = data.train.x[rows].astype(np.float64), data.train.y[rows]
    design = np.hstack([x, np.ones((len(x), 1))])
    coef, *_ = np.linalg.lstsq(design, np.eye(3)[y], rcond=None)
    accuracy = np.mean((design @ coef).argmax(1) == y)
    majority = np.bincount(y).max() / len(y)
    assert accuracy > majority + 0.02 or majority == 1.0
    assert np.mean([np.bincount(data.train.y[data.train_users == u]).max() < (data.train_users == u).sum()
                    for u in range(10)]) > 0.3  # most users see more than one label


# ---------------------------------------------------------------- loader


def test_default_config_needs_no_files_and_is_deterministic():
    first = load_federated_dataset(DataConfig(), seed=3)
    again = load_federated_dataset(DataConfig(), seed=3)
    other = load_federated_dataset(DataConfig(), seed=4)
    assert first.num_clients == 30 and first.num_classes == 10
    np.testing.assert_array_equal(first.client_index, again.client_index)
    np.testing.assert_array_equal(first.train.x, again.train.x)
    assert first.train.x.shape != other.train.x.shape or not np.array_equal(first.train.x, other.train.x)


def test_natural_partition_only_for_datasets_with_users():
    with pytest.raises(ValueError, match="data.partition.scheme") as excinfo:
        load_federated_dataset(DataConfig(dataset="mnist", partition={"scheme": "natural"}), seed=0)
    assert "femnist" in str(excinfo.value) and "shakespeare" in str(excinfo.value)


def test_natural_synthetic_gives_one_client_per_user():
    fed = load_federated_dataset(DataConfig(num_clients=8, partition={"scheme": "natural"}, holdout_fraction=0), 0)
    assert fed.num_clients == 8
    np.testing.assert_array_equal(np.sort(fed.client_index), np.arange(len(fed.train)))
    sizes = fed.client_train_sizes()
    assert sizes.max() - sizes.min() > 1  # log-normal user sizes, unlike an iid split


def test_loader_reads_path_subsamples_and_partitions(tmp_path):
    write_idx_set(tmp_path, np.random.default_rng(16), n_train=40, n_test=10, compress=True)
    cfg = DataConfig(dataset="fashion_mnist", path=tmp_path, num_clients=4, max_train_samples=20,
                     max_test_samples=5, holdout_fraction=0.25)
    fed = load_federated_dataset(cfg, seed=0)
    assert len(fed.train) == 20 and len(fed.test) == 5 and fed.num_clients == 4
    assert fed.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(np.sort(fed.client_index), np.arange(20))
    assert (fed.holdout_counts >= 1).all()
    np.testing.assert_array_equal(load_federated_dataset(cfg, seed=0).client_index, fed.client_index)


def test_loader_natural_keeps_the_largest_users(tmp_path):
    rng = np.random.default_rng(17)
    sizes = {"u0": 2, "u1": 5, "u2": 3, "u3": 5}
    write_leaf(tmp_path, "train", "a.json", {u: femnist_rows(rng, n) for u, n in sizes.items()})
    write_leaf(tmp_path, "test", "a.json", {"u0": femnist_rows(rng, 2)})
    cfg = DataConfig(dataset="femnist", path=tmp_path, num_clients=3, partition={"scheme": "natural"},
                     holdout_fraction=0)
    fed = load_federated_dataset(cfg, seed=0)
    assert fed.num_clients == 3 and len(fed.train) == 13  # u0's rows are dropped
    np.testing.assert_array_equal(fed.client_train_sizes(), [5, 3, 5])


def test_default_paths_and_missing_data_error(tmp_path, monkeypatch):
    assert default_data_path("fashion_mnist") == FASHION_MNIST
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_path("cifar10") == tmp_path / "cifar10"
    with pytest.raises(DataError) as excinfo:
        load_federated_dataset(DataConfig(dataset="cifar10"), seed=0)
    assert_data_error(excinfo, tmp_path / "cifar10", "cifar-10-python.tar.gz")
    monkeypatch.delenv(DATA_DIR_ENV)
    assert default_data_path("emnist") == Path.home() / ".cache" / "raysim" / "data" / "emnist"


def test_array_dataset_normalises_strides_of_length_one_axes():
    odd = np.arange(24, dtype=np.float32).reshape(4, 2, 3)[:, None]  # channel stride 0
    assert odd.strides[1] == 0
    data = ArrayDataset(odd, np.zeros(4, dtype=np.int64))
    assert data.x.strides == np.empty(odd.shape, dtype=odd.dtype).strides and np.array_equal(data.x, odd)
