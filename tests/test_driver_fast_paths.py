"""The driver's vectorised per-round work against the per-client code it replaced: the same
client seeds, the same worker shares, the same predicted costs."""
import numpy as np
import pytest

from raysim.algorithms.fedavg import FedAvg
from raysim.engine.api import ClientTask
from raysim.engine.ray_backend import CLIENT_OVERHEAD_EXAMPLES, balance, predicted_cost
from raysim.engine.seeds import derive_seed, derive_seeds


@pytest.mark.parametrize("root", [0, 3, 2**32 - 1, 2**32, 2**63 - 1, 2**64 + 7, 2**130 + 3])
@pytest.mark.parametrize("keys", [(), (0,), (5,), (2**32,), (7, 2**33 + 1)])
def test_vectorised_seeds_equal_derive_seed(root, keys):
    last = np.concatenate([[0, 1, 2**32 - 1], np.random.default_rng(root % 97).integers(0, 2**32, 40)])
    got = derive_seeds(root, "client", keys, last)
    assert got.dtype == np.uint64
    assert [int(s) for s in got] == [derive_seed(root, "client", *keys, int(k)) for k in last]


def test_vectorised_seeds_refuse_what_derive_seed_refuses():
    with pytest.raises(ValueError, match="unknown seed purpose"):
        derive_seeds(0, "nope", (), np.arange(3))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*32\)"):
        derive_seeds(0, "client", (), np.array([2**32]))
    assert derive_seeds(0, "client", (1,), np.zeros(0, np.int64)).size == 0


def test_fedavg_tasks_carry_each_clients_own_seed(small_config):
    cfg = small_config(seed=11)
    algo = FedAvg(cfg)
    state = algo.init_state({})
    clients = [0, 3, 4, 11]
    plan = algo.configure_round(state, 2, clients)
    assert [t.seed for t in plan.tasks] == [derive_seed(11, "client", 2, k) for k in clients]
    assert all(type(t.seed) is int and type(t.client) is int for t in plan.tasks)


def _reference_balance(costs, workers):
    """The per-task loop balance() replaced."""
    loads = np.zeros(workers)
    assigned = [[] for _ in range(workers)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        w = int(np.argmin(loads))
        loads[w] += costs[i]
        assigned[w].append(i)
    return [sorted(a) for a in assigned]


def test_balance_equals_the_per_task_loop_with_ties_and_floats():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, workers = int(rng.integers(0, 150)), int(rng.integers(1, 9))
        costs = rng.integers(20, 30, n).astype(float) if trial % 2 else rng.random(n) * 100  # ties, then none
        assert balance(costs, workers) == _reference_balance(costs, workers)


def test_predicted_cost_equals_the_per_task_formula():
    train, holdout = np.array([5, 0, 12, 7]), np.array([1, 0, 3, 2])
    tasks = [ClientTask(0, 2, 0, "train", epochs=3), ClientTask(0, 3, 0, "evaluate"), ClientTask(0, 1, 0, "explore"),
             ClientTask(0, 0, 0, "train", epochs=1)]
    expected = [CLIENT_OVERHEAD_EXAMPLES + 36, CLIENT_OVERHEAD_EXAMPLES + 2, CLIENT_OVERHEAD_EXAMPLES + 0,
                CLIENT_OVERHEAD_EXAMPLES + 5]
    got = predicted_cost(tasks, train, holdout)
    assert got.dtype == float and got.tolist() == expected
    assert predicted_cost([], train, holdout).shape == (0,)


def test_clock_prediction_equals_client_time_s_per_client(small_config):
    from raysim.data.loading import load_federated_dataset
    from raysim.devices import Population, client_time_s
    from raysim.engine.api import Broadcast
    from raysim.engine.clock import ClockPredictor
    from raysim.experiment import model_factory

    cfg = small_config(data={"num_clients": 12})
    ds = load_federated_dataset(cfg.data, cfg.seed)
    mix = {"iot": 1, "phone_low": 2, "laptop": 1, "datacenter_gpu": 1}
    pop = Population.from_mix(ds.num_clients, mix, 5)
    factory = model_factory(cfg, ds.input_shape, ds.num_classes, None)
    clock = ClockPredictor(ds, pop, factory)
    tasks = [ClientTask(0, c, 0, "train", epochs=1 + c % 3) for c in (0, 5, 3, 11, 7, 7)]
    broadcast = Broadcast(factory(None).state_dict(), payload_bytes=12_345)
    per_example = clock.flops_per_example(None)
    expected = [client_time_s(pop.profile(t.client), per_example * ds.client_train_sizes()[t.client] * t.epochs,
                              12_345, 12_345).total_s for t in tasks]
    assert clock.predict_s(tasks, broadcast).tolist() == expected  # bit for bit
    assert clock.predict_s([], broadcast).shape == (0,)
    with pytest.raises(IndexError):
        clock.predict_s([ClientTask(0, 12, 0)], broadcast)
