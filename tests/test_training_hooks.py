"""The client-side hooks an algorithm gets from local_train: a loss term and an after-step hook."""
import math

import torch
from torch import nn

from raysim.config import OptimizerConfig
from raysim.engine.api import ClientData
from raysim.engine.training import local_train


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    data = ClientData(torch.randn(23, 5), torch.randint(0, 3, (23,)))
    return model, data


def _train(model, data, **hooks):
    return local_train(model, data, epochs=2, batch_size=5, optimizer=OptimizerConfig(lr=0.5), lr=0.5, seed=1,
                       **hooks)


def test_after_step_runs_after_every_step_and_its_changes_are_trained_on():
    model, data = _setup()
    mask = {"0.weight": torch.rand(4, 5) > 0.5}
    seen = []

    def clamp(m):
        assert not torch.is_grad_enabled()
        seen.append(bool(m[0].weight[~mask["0.weight"]].eq(0).all()))  # the mask is already enforced
        for p in m.parameters():
            p.clamp_(-0.05, 0.05)

    _train(model, data, masks=mask, after_step=clamp)
    assert len(seen) == 2 * math.ceil(23 / 5) and all(seen)
    assert all(p.abs().max() <= 0.05 for p in model.parameters())
    free, _ = _setup()
    _train(free, data, masks=mask)
    assert any(p.abs().max() > 0.05 for p in free.parameters())  # the clamp is what bounded them


def test_a_hook_that_changes_nothing_leaves_training_bit_identical():
    a, data = _setup()
    b, _ = _setup()
    ra = _train(a, data)
    rb = _train(b, data, after_step=lambda m: None, extra_loss=lambda m: torch.zeros(()))
    assert ra == rb and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_each_client_draws_its_global_randomness_from_its_own_seed(small_config):
    """Dropout draws from torch's global RNG: the runner seeds it per client, so a client's
    update depends on its task's seed only, not on which clients ran before it."""
    from dataclasses import replace

    from conftest import algorithm_parts
    from raysim.engine.runner import ClientRunner

    cfg = small_config()
    ds, _, algo, runner = algorithm_parts(cfg)

    def dropout_model(arch):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(ds.input_shape[0], 16), nn.Dropout(0.5), nn.Linear(16, ds.num_classes))

    runner = ClientRunner(algo, ds, runner.population, dropout_model)
    plan = algo.configure_round(algo.init_state(dropout_model(None).state_dict()), 0, [0, 1])
    first, second = plan.tasks

    def delta(tasks):
        return runner.run(tasks, plan.broadcast).stats["delta"].total

    alone, after_other = delta([second]), delta([first, second])
    both_alone = {k: delta([first])[k] + alone[k] for k in alone}
    assert all(torch.equal(after_other[k], both_alone[k]) for k in alone)  # order does not leak into a client
    reseeded = delta([replace(second, seed=second.seed + 1)])
    assert not all(torch.equal(reseeded[k], alone[k]) for k in alone)  # the seed is what dropout drew from
