"""The synthetic dataset without resident rows (data.synthetic.resident=false): each client's
rows come from its own seed, the same in any process and on either backend."""
import pickle
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import crashed_run
from raysim.config import ConfigError, DataConfig
from raysim.data.federated import FederatedDataset
from raysim.data.loading import load_federated_dataset
from raysim.data.population_memory import MAX_LAZY_CLIENTS
from raysim.data.synthetic_lazy import LazySyntheticDataset, holdout_counts_for
from raysim.experiment import execute, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

LAZY = {"num_clients": 40, "partition": {"scheme": "natural"},
        "synthetic": {"resident": False, "mean_samples": 1.0, "min_samples": 10, "max_samples": 40, "test_users": 8}}
VOLATILE = {"wall_time_s", "client_train_wall_s"}


def _lazy(**extra) -> LazySyntheticDataset:
    return load_federated_dataset(DataConfig(**{**LAZY, **extra}), seed=7)


def _client_bytes(dataset, clients) -> list[bytes]:
    return [b"".join(a.tobytes() for a in (*dataset.client_train(c), *dataset.client_holdout(c))) for c in clients]


def test_a_client_gives_the_same_rows_every_time_and_in_another_process():
    ds = _lazy()
    again = _lazy()
    assert _client_bytes(ds, range(40)) == _client_bytes(again, range(40))
    # A fresh interpreter (as a Ray worker is) makes the same rows from the unpickled dataset.
    code = ("import pickle, sys; ds = pickle.loads(sys.stdin.buffer.read()); "
            "sys.stdout.buffer.write(b''.join(a.tobytes() for c in (5, 17, 39) "
            "for a in (*ds.client_train(c), *ds.client_holdout(c))))")
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(ds), capture_output=True, check=True)
    assert out.stdout == b"".join(_client_bytes(ds, (5, 17, 39)))
    # Clients differ from each other, and another seed gives other rows.
    assert len(set(_client_bytes(ds, range(40)))) == 40
    other = load_federated_dataset(DataConfig(**LAZY), seed=8)
    assert _client_bytes(other, [0]) != _client_bytes(ds, [0])


def test_rows_follow_the_counts_and_holdout_and_the_driver_holds_no_rows():
    ds = _lazy(holdout_fraction=0.25)
    sizes = ds.client_train_sizes()
    for c in range(40):
        x, y = ds.client_train(c)
        hx, hy = ds.client_holdout(c)
        assert x.shape == (sizes[c], 60) and x.dtype == np.float32 and y.dtype == np.int64
        assert len(hy) == ds.holdout_counts[c] >= 1 and len(hx) == len(hy)
        assert 1 <= ds.row_counts[c] - len(x) - len(hx) == round(ds.row_counts[c] * 0.2)  # its test rows
        assert y.min() >= 0 and y.max() < 10
    # The same counts as the resident dataset of the same seed (the same stream draws them).
    resident = load_federated_dataset(DataConfig(**{**LAZY, "synthetic": {**LAZY["synthetic"], "resident": True}}),
                                      seed=7)
    assert isinstance(resident, FederatedDataset)
    assert np.array_equal(np.diff(resident.client_offsets), sizes + ds.holdout_counts)
    # Pickled (what ray.put ships), it is the counts and the bounded test set, not the rows.
    assert len(pickle.dumps(ds)) < 40 * 8 + ds.test.x.nbytes + ds.test.y.nbytes + 4096


def test_the_test_set_is_the_chosen_users_test_rows_and_bounded():
    ds = _lazy()
    big = load_federated_dataset(DataConfig(**{**LAZY, "num_clients": 100_000}), seed=7)
    # 8 users' test rows (each user's rows after its training rows), however large the population.
    assert 8 <= len(ds.test) <= 8 * 40 and 8 <= len(big.test) <= 8 * 40
    test_rows = {ds.test.x[i].tobytes() for i in range(len(ds.test))}
    own = [c for c in range(40) if ds.user_rows(c)[0][-1].tobytes() in test_rows]
    assert len(own) == 8
    capped = _lazy(max_test_samples=5)
    assert len(capped.test) == 5 and {capped.test.x[i].tobytes() for i in range(5)} <= test_rows


def test_the_labels_follow_each_users_model():
    """LEAF's model: labels are argmax(W_k x + b_k) of the user's own model, so users disagree
    (alpha = 1) and each user's labels are far from uniform."""
    ds = _lazy(num_clients=200)
    shares = []
    for c in range(200):
        y = ds.user_rows(c)[1]
        shares.append(np.bincount(y, minlength=10).max() / len(y))
    assert np.mean(shares) > 0.4  # a uniform labeller would give about 0.2 for 10 to 40 rows


def test_holdout_rule_matches_the_resident_partition():
    rng = np.random.default_rng(0)
    for fraction in (0.0, 0.1, 0.25, 0.5):
        n = np.array([1, 2, 3, 5, 9, 10, 15, 40])
        built = FederatedDataset.from_partition(None, None, 2, [np.arange(k) for k in n], fraction, rng)
        assert np.array_equal(holdout_counts_for(n, fraction), built.holdout_counts)


def test_bad_settings_are_refused_with_the_setting_named():
    with pytest.raises(ConfigError, match="data.partition.scheme=natural"):
        _lazy(partition={"scheme": "iid"})
    with pytest.raises(ConfigError, match="data.max_train_samples"):
        _lazy(max_train_samples=10)
    with pytest.raises(ConfigError, match=f"over raysim's limit of {MAX_LAZY_CLIENTS:,} clients"):
        _lazy(num_clients=MAX_LAZY_CLIENTS + 1)


def _lazy_run(small_config, **extra):
    data = {**LAZY, "num_clients": 24, "holdout_fraction": 0.2}
    return small_config(data=data, eval={"every": 1, "max_clients": 5}, **extra)


def _result(cfg):
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    rows = [{k: v for k, v in r.items() if k not in VOLATILE} for r in pq.read_table(run_dir / "rounds.parquet").to_pylist()]
    return rows, load_checkpoint(latest_checkpoint(run_dir)).weights


@pytest.mark.usefixtures("ray_cluster")
def test_a_lazy_population_trains_identically_on_ray_and_in_process(small_config):
    rows_in, w_in = _result(_lazy_run(small_config, rounds=2, backend={"name": "inprocess"}))
    rows_ray, w_ray = _result(_lazy_run(small_config, rounds=2,
                                        backend={"name": "ray", "num_workers": 2, "clients_per_call": 2}))
    assert all(r["clients_done"] == 4 and r["client_accuracy"] is not None for r in rows_in)
    for a, b in zip(rows_in, rows_ray, strict=True):
        for key in ("clients_done", "flops_executed", "bytes_down", "bytes_up", "train_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
        assert a["client_accuracy"] == pytest.approx(b["client_accuracy"], abs=1e-6)
    for k, v in w_in.items():
        torch.testing.assert_close(w_ray[k], v, rtol=1e-5, atol=1e-6)


def test_a_resumed_lazy_run_equals_the_uninterrupted_one(small_config, monkeypatch):
    cfg = _lazy_run(small_config, rounds=4, output={"checkpoint_every": 2})
    full_rows, full_w = _result(cfg)
    crashed = crashed_run(cfg, monkeypatch, crash_round=3)
    execute(cfg, crashed, resume=True)
    rows = [{k: v for k, v in r.items() if k not in VOLATILE} for r in pq.read_table(crashed / "rounds.parquet").to_pylist()]
    assert rows == full_rows
    resumed = load_checkpoint(latest_checkpoint(crashed)).weights
    assert all(torch.equal(full_w[k], resumed[k]) for k in full_w)


def test_a_clients_train_rows_follow_the_vectorised_test_rule():
    counts = np.arange(2, 3000)
    for fraction in (0.05, 0.1, 0.2, 0.25, 0.5, 0.9):
        ds = LazySyntheticDataset(DataConfig(**LAZY).synthetic.model_copy(update={"test_fraction": fraction}), 0,
                                  counts.astype(np.int32), np.zeros(len(counts), np.int32), None)
        assert [ds._train_rows(c) for c in range(len(counts))] == ds.client_train_sizes().tolist()


def test_the_cli_refuses_a_lazy_population_with_another_partition(tmp_path, capsys):
    from raysim.cli import main

    assert main(["run", "--set", "data.synthetic.resident=false", "--set", "data.partition.scheme=iid",
                 "--set", f"output.dir={tmp_path}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "data.synthetic.resident=false gives one client per user" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no run folder left behind


def test_the_lazy_rows_follow_the_resident_generators_model():
    """Same LEAF model, other draws: per-user statistics agree with the resident dataset's."""
    base = {"num_clients": 1500, "partition": {"scheme": "natural"}, "holdout_fraction": 0.0}

    def stats(ds):
        share, means, spread = [], [], []
        for c in range(ds.num_clients):
            x, y = ds.client_train(c)
            share.append(np.bincount(y, minlength=10).max() / len(y))  # how one-sided a user's labels are
            means.append(x.mean())  # its feature mean: v_k ~ N(B_k, 1), B_k ~ N(0, beta)
            spread.append(x[:, :5].std(axis=0).mean())  # within a user: Sigma_jj = j^-1.2
        return np.mean(share), np.std(means), np.mean(spread)

    resident = stats(load_federated_dataset(DataConfig(**base), seed=0))
    lazy = stats(load_federated_dataset(DataConfig(**base, synthetic={"resident": False}), seed=0))
    assert lazy[0] == pytest.approx(resident[0], abs=0.03)
    assert lazy[1] == pytest.approx(resident[1], rel=0.1)
    assert lazy[2] == pytest.approx(resident[2], rel=0.05)
    beta2 = stats(load_federated_dataset(DataConfig(**base, synthetic={"resident": False, "beta": 2.0}), seed=0))
    assert beta2[1] > 1.5 * lazy[1]  # beta moves the users' features apart
