"""SCAFFOLD: the control variates, checked against the update rule written out here; the
per-client store survives checkpoints and travels through the Ray tree."""
import math

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from conftest import algorithm_parts
from raysim.experiment import execute, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

PLAIN_SGD = {"clients": {"per_round": 4, "local_epochs": 2, "batch_size": 16, "lr_decay": 1.0,
                         "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.0}},
             "algorithm": {"name": "scaffold", "server_lr": 1.0, "server_momentum": 0.0}}


def _cfg(small_config, **extra):
    return small_config(**PLAIN_SGD | extra)


def _by_hand(factory, weights, x, y, seed, lr, epochs, batch, correction):
    """K SGD steps on cross-entropy, each gradient plus `correction` (c - c_i)."""
    model = factory(None)
    model.load_state_dict(weights)
    gen = torch.Generator().manual_seed(seed)
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            model.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p -= lr * (p.grad + correction[n])
            steps += 1
    return model.state_dict(), steps


def test_two_rounds_of_control_variates_follow_the_update_rule(small_config):
    cfg = _cfg(small_config)
    ds, factory, algo, runner = algorithm_parts(cfg)
    state = algo.init_state(factory(None).state_dict())
    algo.setup_plan(state, ds.num_clients)
    c = {k: torch.zeros_like(v) for k, v in state.weights.items()}
    own = {}
    for round_idx, clients in enumerate(([0, 3, 5, 7], [3, 4, 5, 6])):
        plan = algo.configure_round(state, round_idx, clients)
        partial = runner.run(plan.tasks, plan.broadcast)
        changes, deltas, sizes = [], [], []
        for task in plan.tasks:
            rows = ds.client_train_rows(task.client)
            x, y = torch.from_numpy(ds.train.x[rows]), torch.from_numpy(ds.train.y[rows])
            c_i = own.get(task.client, {k: torch.zeros_like(v) for k, v in c.items()})
            y_w, steps = _by_hand(factory, state.weights, x, y, task.seed, task.lr, task.epochs, 16,
                                  {k: c[k] - c_i[k] for k in c})
            assert steps == task.epochs * math.ceil(len(rows) / 16)
            delta = {k: y_w[k] - state.weights[k] for k in c}
            new = {k: c_i[k] - c[k] - delta[k] / (steps * task.lr) for k in c}
            for k in c:  # what the client kept for itself
                assert torch.allclose(partial.client_states[task.client][k], new[k], atol=1e-4)
            changes.append({k: new[k] - c_i[k] for k in c})
            deltas.append(delta)
            sizes.append(len(rows))
            own[task.client] = new
        before = state.weights
        state, _ = algo.aggregate(state, plan, partial)
        for k in c:
            mean_delta = sum(n * d[k].double() for n, d in zip(sizes, deltas)) / sum(sizes)
            assert torch.allclose(state.weights[k].double(), before[k].double() + mean_delta, atol=1e-5)
            c[k] = c[k] + len(clients) / ds.num_clients * sum(ch[k] for ch in changes) / len(clients)
            assert torch.allclose(state.buffers["scaffold_c/" + k], c[k], atol=1e-4)
        for client in clients:
            assert all(torch.equal(state.buffers[f"client/{client}/{k}"], partial.client_states[client][k]) for k in c)


def test_control_variates_are_billed_and_survive_a_resume(small_config):
    cfg = _cfg(small_config, rounds=3)
    straight_dir = new_run(cfg)
    execute(cfg, straight_dir)
    straight = load_checkpoint(latest_checkpoint(straight_dir))
    assert any(k.startswith("client/") for k in straight.buffers)
    short = _cfg(small_config, rounds=2)
    run_dir = new_run(short)
    execute(short, run_dir)
    execute(cfg, run_dir, resume=True)
    again = load_checkpoint(latest_checkpoint(run_dir))
    assert again.buffers.keys() == straight.buffers.keys()
    assert all(torch.equal(again.buffers[k], straight.buffers[k]) for k in straight.buffers)
    rows = pq.read_table(straight_dir / "rounds.parquet").to_pylist()
    fed = _cfg(small_config, rounds=3, algorithm=PLAIN_SGD["algorithm"] | {"name": "fedavg"})
    fed_dir = new_run(fed)
    execute(fed, fed_dir)
    fed_rows = pq.read_table(fed_dir / "rounds.parquet").to_pylist()
    # Each client uploads its control change too: the uplink doubles, the downlink does not.
    assert [r["bytes_up"] for r in rows] == [2 * r["bytes_up"] for r in fed_rows]


def test_the_per_client_store_travels_through_the_ray_tree(small_config, ray_cluster):
    weights = {}
    for backend in ("inprocess", "ray"):
        cfg = _cfg(small_config, rounds=2, backend={"name": backend, "num_workers": 2, "clients_per_call": 1})
        run_dir = new_run(cfg)
        execute(cfg, run_dir)
        weights[backend] = load_checkpoint(latest_checkpoint(run_dir))
    a, b = weights["inprocess"], weights["ray"]
    trained = {k.split("/")[1] for k in b.buffers if k.startswith("client/")}
    assert len(trained) >= 4  # every client that trained has its state, from whichever worker ran it
    assert a.buffers.keys() == b.buffers.keys()
    assert all(torch.allclose(a.buffers[k], b.buffers[k], atol=1e-6) for k in a.buffers)
    assert all(torch.allclose(a.weights[k], b.weights[k], atol=1e-6) for k in a.weights)


def test_scaffold_refuses_clients_its_update_rule_does_not_hold_for(small_config):
    cfg = _cfg(small_config, clients=PLAIN_SGD["clients"] | {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.5}})
    with pytest.raises(ValueError, match="plain SGD clients"):
        execute(cfg, new_run(cfg))
