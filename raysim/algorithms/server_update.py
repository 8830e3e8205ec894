"""The server step shared by every method, so comparisons differ only in the method:
theta <- theta + server_lr * v, v <- momentum * v + mean client delta."""
from __future__ import annotations

import torch

from raysim.engine.stats import Tensors

MOMENTUM_PREFIX = "server_momentum/"


def is_trainable_state(tensor: torch.Tensor) -> bool:
    """Float entries are averaged; integer ones (BatchNorm's batch counter) stay the server's."""
    return tensor.is_floating_point()


def apply_server_update(
    weights: Tensors, buffers: Tensors, mean_delta: Tensors, server_lr: float, momentum: float
) -> tuple[Tensors, Tensors]:
    new_weights, new_buffers = dict(weights), dict(buffers)
    for name, delta in mean_delta.items():
        step = delta
        if momentum > 0:
            key = MOMENTUM_PREFIX + name
            velocity = buffers.get(key, torch.zeros_like(delta)) * momentum + delta
            new_buffers[key] = velocity
            step = velocity
        new_weights[name] = weights[name] + server_lr * step
    return new_weights, new_buffers
