"""Local training and evaluation on one client's data: plain PyTorch, no framework."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from raysim.config import OptimizerConfig
from raysim.engine.api import ClientData
from raysim.engine.stats import Tensors


@dataclass(frozen=True)
class TrainResult:
    examples_processed: int
    epoch_losses: tuple[float, ...]


def make_optimizer(params, cfg: OptimizerConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def _param_masks(model: nn.Module, masks: Tensors) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    params = dict(model.named_parameters())
    missing = sorted(set(masks) - set(params))
    if missing:
        raise KeyError(f"masks name parameters the model does not have: {missing}")
    return [(params[name], mask.to(params[name].dtype)) for name, mask in masks.items()]


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Tensors) -> None:
    for param, mask in _param_masks(model, masks):
        param.mul_(mask)


def local_train(
    model: nn.Module,
    data: ClientData,
    *,
    epochs: int,
    batch_size: int,
    optimizer: OptimizerConfig,
    lr: float,
    seed: int,
    masks: Tensors | None = None,
    patience: int | None = None,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> TrainResult:
    """Train in place. Masked entries get zero gradient and are re-zeroed after every
    step (Adam's moment estimates would otherwise move them). With `patience`, stop
    once the epoch-mean loss has not improved for that many epochs.

    The algorithm's hooks: `extra_loss(model)` is added to each batch's loss before the
    backward pass (FedProx's proximal term); `after_step(model)` runs after every optimizer
    step and the mask enforcement, under torch.no_grad (a projection, a clamp, a
    client-chosen mask)."""
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model.parameters(), optimizer, lr)
    pairs = _param_masks(model, masks or {})
    model.train()
    n = len(data)
    losses: list[float] = []
    examples, best, stale = 0, float("inf"), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
            # A term of the algorithm's (FedProx's proximal term) is trained on, not reported:
            # epoch losses stay comparable across methods.
            (loss + extra_loss(model) if extra_loss is not None else loss).backward()
            for param, mask in pairs:
                param.grad.mul_(mask)
            opt.step()
            with torch.no_grad():
                for param, mask in pairs:
                    param.mul_(mask)
                if after_step is not None:
                    after_step(model)
            total += loss.item() * len(idx)
            examples += len(idx)
        losses.append(total / max(n, 1))
        if patience is not None:
            if losses[-1] < best - 1e-12:
                best, stale = losses[-1], 0
            else:
                stale += 1
                if stale >= patience:
                    break
    return TrainResult(examples, tuple(losses))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, int, int]:
    """(summed loss, correct predictions, examples)."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return loss_sum, correct, len(y)
