"""backend.vectorize: several clients trained as one vmap'd computation must train each client
as local_train trains it alone (within float tolerance), and fall back where it cannot."""
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from raysim.algorithms.fedavg import FedAvg
from raysim.config import OptimizerConfig
from raysim.engine.api import ClientData
from raysim.engine.training import local_train
from raysim.engine.vectorized import NotVectorizable, train_together
from raysim.experiment import execute, new_run

VOLATILE = {"wall_time_s", "client_train_wall_s", "clients_vectorized"}


def _clients(sizes, features=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [ClientData(torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g))
            for n in sizes]


def _mlp(seed=0, extra: nn.Module | None = None):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 8), nn.ReLU()] + ([extra] if extra is not None else []) + [nn.Linear(8, 3)]
    return nn.Sequential(*layers)


class DropoutMLP(nn.Module):
    """A model plug-in with a random forward pass (run by import path in-process)."""

    def __init__(self, input_shape, num_classes, cfg):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), 8), nn.ReLU(),
                                      nn.Dropout(0.5))
        self.classifier = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class DeclinesTheFirstRound(FedAvg):
    """An algorithm whose refusal depends on the broadcast: the runner must ask again next round."""

    def client_updates(self, model, datas, tasks, broadcast):
        return None if tasks[0].round == 0 else super().client_updates(model, datas, tasks, broadcast)


@pytest.mark.parametrize("opt", [
    OptimizerConfig(name="sgd", lr=0.1),
    OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.01),
])
def test_each_client_trains_as_it_would_alone(opt):
    """Unequal sizes (1 row to 4 batches), 2 epochs, own seeds: the group's weights and losses
    per client equal local_train's, including the clients idle in the padded steps."""
    model, sizes, seeds = _mlp(), [7, 23, 10, 1, 20], [11, 12, 13, 14, 15]
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    datas = _clients(sizes)
    together = train_together(model, weights, datas, seeds, epochs=2, batch_size=5, optimizer=opt, lr=0.1)
    for data, seed, (params, result) in zip(datas, seeds, together, strict=True):
        alone = _mlp()
        alone.load_state_dict(weights)
        want = local_train(alone, data, epochs=2, batch_size=5, optimizer=opt, lr=0.1, seed=seed)
        assert result.examples_processed == want.examples_processed == 2 * len(data)
        assert result.epoch_losses == pytest.approx(want.epoch_losses, rel=1e-5)
        for name, p in alone.named_parameters():
            torch.testing.assert_close(params[name], p.detach(), rtol=1e-5, atol=1e-6)
        assert not torch.equal(params["0.weight"], weights["0.weight"])  # it did train


def test_what_cannot_be_vectorised_says_why():
    datas, seeds = _clients([4, 4]), [1, 2]
    cases = {
        "dropout": (_mlp(extra=nn.Dropout(0.5)), OptimizerConfig(name="sgd", lr=0.1), "vmap"),
        "batchnorm": (_mlp(extra=nn.BatchNorm1d(8)), OptimizerConfig(name="sgd", lr=0.1), "buffers"),
        "adam": (_mlp(), OptimizerConfig(name="adam", lr=0.1), "only SGD"),
    }
    for name, (model, opt, why) in cases.items():
        weights = dict(model.state_dict())
        with pytest.raises(NotVectorizable, match=why):
            train_together(model, weights, datas, seeds, epochs=1, batch_size=2, optimizer=opt, lr=0.1)


def _rows(cfg):
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    return pq.read_table(run_dir / "rounds.parquet").to_pylist()


def _assert_close_runs(a, b, rel):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for k in x.keys() - VOLATILE:
            if isinstance(x[k], float):
                assert y[k] == pytest.approx(x[k], rel=rel, abs=1e-9), (x["round"], k)
            else:
                assert y[k] == x[k], (x["round"], k)


@pytest.mark.parametrize("resident", [True, False])
def test_a_vectorised_run_equals_the_plain_run_within_float_tolerance(small_config, resident):
    """The synthetic population (unequal clients; rows resident or generated per client), SGD
    with momentum, learning-rate decay, server momentum, 2 local epochs: every round's numbers
    agree, costs exactly."""
    data = {"synthetic": {"resident": resident}}
    plain = _rows(small_config(rounds=3, data=data))
    vec = _rows(small_config(rounds=3, data=data, backend={"name": "inprocess", "vectorize": True}))
    _assert_close_runs(plain, vec, rel=1e-4)
    assert [r["clients_vectorized"] for r in vec if r["round"] > 0] == [r["clients_done"] for r in vec if r["round"] > 0]
    assert all(r["clients_vectorized"] == 0 for r in plain)
    assert all(r["clients_done"] > 0 for r in vec)


@pytest.mark.parametrize("change", [
    {"algorithm": {"name": "fedprox", "params": {"mu": 0.1}}},  # changes local training: one at a time
    {"model": {"name": "test_vectorized:DropoutMLP"}},  # random forward: vmap refuses
    {"model": {"name": "mlp", "hidden": 8, "layers": 1},  # a mask in every broadcast
     "algorithm": {"name": "magnitude", "pruning": {"sparsity": 0.5}}},
])
def test_what_is_not_vectorised_runs_one_at_a_time_bit_for_bit(small_config, change):
    plain = _rows(small_config(rounds=2, **change))
    vec = _rows(small_config(rounds=2, **change, backend={"name": "inprocess", "vectorize": True}))
    assert all(r["clients_vectorized"] == 0 for r in vec)
    assert [{k: r[k] for k in r.keys() - VOLATILE} for r in vec] == [{k: r[k] for k in r.keys() - VOLATILE}
                                                                       for r in plain]


@pytest.mark.usefixtures("ray_cluster")
def test_ray_workers_vectorise_their_calls_and_agree_with_in_process(small_config):
    """Each Ray worker groups the clients of one call; the run equals the in-process
    vectorised run (whose groups differ) within float tolerance."""
    vec = {"vectorize": True, "clients_per_call": 3}
    ray_rows = _rows(small_config(rounds=2, data={"num_clients": 16}, clients={"per_round": 8},
                                  backend={"name": "ray", "num_workers": 2, **vec}))
    local = _rows(small_config(rounds=2, data={"num_clients": 16}, clients={"per_round": 8},
                               backend={"name": "inprocess", **vec}))
    pool = {"workers", "busy_fraction", "workers_replaced", "nodes", "cross_node_partials", "merge_nodes"}
    _assert_close_runs([{k: v for k, v in r.items() if k not in pool} for r in local],
                       [{k: v for k, v in r.items() if k not in pool} for r in ray_rows], rel=1e-5)
    assert [r["clients_vectorized"] for r in ray_rows] == [r["clients_done"] for r in ray_rows]


def test_a_refusal_for_one_broadcast_is_asked_again_for_the_next(small_config):
    rows = _rows(small_config(rounds=3, algorithm={"name": "test_vectorized:DeclinesTheFirstRound"},
                              backend={"name": "inprocess", "vectorize": True}))
    assert [r["clients_vectorized"] for r in rows] == [0] + [r["clients_done"] for r in rows[1:]]
    assert rows[1]["clients_done"] > 0
