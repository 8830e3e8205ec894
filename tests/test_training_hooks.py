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
