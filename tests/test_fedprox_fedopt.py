"""FedProx and the adaptive server optimizers (FedAdam, FedYogi, FedAdagrad): each one's
defining arithmetic, checked against a computation written out here."""
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from conftest import algorithm_parts
from raysim.config import ConfigError
from raysim.experiment import execute, new_run
from raysim.results.checkpoint import latest_checkpoint, load_checkpoint

PLAIN = {"clients": {"local_epochs": 2, "lr_decay": 1.0, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.0}},
         "algorithm": {"server_lr": 1.0, "server_momentum": 0.0}}


def _run(small_config, name, rounds=1, params=None, **extra):
    cfg = small_config(rounds=rounds, **PLAIN | extra | {
        "algorithm": PLAIN["algorithm"] | {"name": name, "params": params or {}} | extra.get("algorithm", {})})
    run_dir = new_run(cfg)
    execute(cfg, run_dir)
    return cfg, run_dir, load_checkpoint(latest_checkpoint(run_dir))


def _rows(run_dir):
    return [{k: v for k, v in r.items() if not k.endswith("wall_s") and k != "wall_time_s"}
            for r in pq.read_table(run_dir / "rounds.parquet").to_pylist()]


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit(small_config):
    _, fed_dir, fed = _run(small_config, "fedavg", rounds=2)
    _, prox_dir, prox = _run(small_config, "fedprox", rounds=2, params={"mu": 0.0})
    assert all(torch.equal(fed.weights[k], prox.weights[k]) for k in fed.weights)
    assert _rows(fed_dir) == _rows(prox_dir)


def test_fedprox_clients_minimise_the_proximal_objective(small_config):
    """One client's update, written out: SGD on cross-entropy + mu/2 ||w - w_global||^2
    over the same batches local_train draws."""
    mu = 0.5
    cfg = small_config(**PLAIN | {"algorithm": PLAIN["algorithm"] | {"name": "fedprox", "params": {"mu": mu}}})
    ds, factory, algo, runner = algorithm_parts(cfg)
    state = algo.init_state(factory(None).state_dict())
    plan = algo.configure_round(state, 0, [3])
    update = runner.run(plan.tasks, plan.broadcast).stats["delta"].mean()

    task = plan.tasks[0]
    rows = ds.client_train_rows(task.client)
    x, y = torch.from_numpy(ds.train.x[rows]), torch.from_numpy(ds.train.y[rows])
    model = factory(None)
    model.load_state_dict(state.weights)
    anchor = {k: v.clone() for k, v in state.weights.items()}
    gen = torch.Generator().manual_seed(task.seed)
    torch.manual_seed(task.seed)
    for _ in range(cfg.clients.local_epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), cfg.clients.batch_size):
            idx = order[start:start + cfg.clients.batch_size]
            model.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss = loss + mu / 2 * sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= task.lr * p.grad
    expected = {k: v - anchor[k] for k, v in model.state_dict().items()}
    assert all(torch.allclose(update[k], expected[k], atol=1e-6) for k in expected)
    plain = algo_update_norm(small_config, 0.0)
    assert algo_update_norm(small_config, 5.0) < algo_update_norm(small_config, 0.5) < plain  # the pull toward w_global


def algo_update_norm(small_config, mu):
    cfg = small_config(**PLAIN | {"algorithm": PLAIN["algorithm"] | {"name": "fedprox", "params": {"mu": mu}}})
    ds, factory, algo, runner = algorithm_parts(cfg)
    state = algo.init_state(factory(None).state_dict())
    plan = algo.configure_round(state, 0, [3])
    mean = runner.run(plan.tasks, plan.broadcast).stats["delta"].mean()
    return float(sum(v.pow(2).sum() for v in mean.values()))


def _expected_v(rule, d, tau, beta2):
    v0 = torch.full_like(d, tau**2)
    if rule == "fedadam":
        return beta2 * v0 + (1 - beta2) * d * d
    if rule == "fedyogi":
        return v0 - (1 - beta2) * d * d * torch.sign(v0 - d * d)
    return v0 + d * d


@pytest.mark.parametrize("rule", ["fedadam", "fedyogi", "fedadagrad"])
def test_server_optimizers_step_on_the_mean_client_change(small_config, rule):
    params = {"eta": 0.1, "beta1": 0.8, "beta2": 0.95, "tau": 0.01}
    _, _, fed = _run(small_config, "fedavg")  # server lr 1, no momentum: w1 - w0 is the mean client change
    cfg, _, opt = _run(small_config, rule, params=params)
    _, factory, _, _ = algorithm_parts(cfg)
    w0 = factory(None).state_dict()
    for k, w in w0.items():
        d = (fed.weights[k] - w).double()
        m = (1 - params["beta1"]) * d
        v = _expected_v(rule, d, params["tau"], params["beta2"])
        assert torch.allclose(opt.buffers["fedopt_m/" + k].double(), m, atol=1e-7)
        assert torch.allclose(opt.buffers["fedopt_v/" + k].double(), v, rtol=1e-5, atol=1e-12)
        assert torch.allclose((opt.weights[k] - w).double(), 0.1 * m / (v.sqrt() + params["tau"]), atol=1e-5)


def test_server_optimizer_moments_survive_a_resume(small_config):
    cfg, straight_dir, straight = _run(small_config, "fedyogi", rounds=3)
    stop_cfg, run_dir, _ = _run(small_config, "fedyogi", rounds=2)
    resumed = cfg.model_copy(update={"output": stop_cfg.output})
    execute(resumed, run_dir, resume=True)
    again = load_checkpoint(latest_checkpoint(run_dir))
    assert again.round == 3 and all(torch.equal(again.weights[k], straight.weights[k]) for k in straight.weights)
    assert all(torch.equal(again.buffers[k], straight.buffers[k]) for k in straight.buffers)


@pytest.mark.parametrize("name,params,message", [
    ("fedprox", {"mu": -1}, "algorithm.params.mu: Input should be greater than or equal to 0"),
    ("fedadam", {"beta3": 0.5}, "algorithm.params.beta3: unknown field; allowed fields: beta1, beta2, eta, tau"),
    ("fedavg", {"mu": 0.1}, "algorithm.params: fedavg takes no parameters (got mu)"),
])
def test_each_algorithm_checks_its_own_parameters(small_config, name, params, message):
    with pytest.raises(ConfigError) as err:
        small_config(algorithm={"name": name, "params": params})
    assert message in str(err.value)
