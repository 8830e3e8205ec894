"""Several clients' local SGD as one vectorised computation (torch.func.vmap).

Small clients spend most of their time in per-step Python and dispatch overhead, not in
arithmetic: a logistic regression step on 10 rows is a few microseconds of compute
behind tens of microseconds of autograd and optimizer bookkeeping. Stacking K clients'
weights and taking their steps together pays that bookkeeping once per step for all K.

Each client trains exactly as `local_train` would train it alone, up to float rounding:
its own rows, shuffled each epoch by its own generator seeded from its task, the same
batches, the same SGD update (momentum and weight decay included). Clients with fewer
batches than the group's largest sit out the extra steps (their rows are padded with
zero weight and their update is masked), so unequal sizes still group.

What cannot be vectorised raises NotVectorizable, and the caller trains those clients
one at a time: a model with buffers (BatchNorm's running statistics), random operations
in the forward pass (dropout: vmap is run with randomness="error"), an optimizer other
than SGD, masks or per-step hooks.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from raysim.config import OptimizerConfig
from raysim.engine.api import ClientData
from raysim.engine.stats import Tensors
from raysim.engine.training import TrainResult


class NotVectorizable(Exception):
    """These clients cannot train as one vectorised computation; train them one at a time."""


def train_together(
    model: nn.Module,
    weights: Tensors,
    datas: Sequence[ClientData],
    seeds: Sequence[int],
    *,
    epochs: int,
    batch_size: int,
    optimizer: OptimizerConfig,
    lr: float,
) -> list[tuple[Tensors, TrainResult]]:
    """Each client's trained trainable parameters (name -> tensor) and its TrainResult,
    every client starting from `weights`; `model` only supplies the computation."""
    if optimizer.name != "sgd":
        raise NotVectorizable(f"optimizer {optimizer.name!r}: only SGD is vectorised")
    if any(True for _ in model.buffers()):
        raise NotVectorizable("the model has buffers (e.g. BatchNorm statistics), which would need one copy per client")
    if any(len(d) == 0 for d in datas):  # the clients' data, not the model: no reason to stop vectorising
        raise ValueError("a client has no rows; train it alone, where it fails by itself")
    k = len(datas)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = {n: weights[n] for n, p in model.named_parameters() if not p.requires_grad}
    params = {n: weights[n].detach().to(datas[0].x.device).unsqueeze(0).repeat(k, *[1] * weights[n].dim())
              for n in names}
    sizes = [len(d) for d in datas]
    steps = max(math.ceil(n / batch_size) for n in sizes)
    x_all, y_all = _stack_padded(datas, max(sizes))
    device = x_all.device

    def loss(p: Tensors, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # The batch mean over a client's real rows: padding rows weigh 0.
        per_row = F.cross_entropy(functional_call(model, p | frozen, (x,)), y, reduction="none")
        return (per_row * w).sum() / w.sum().clamp_min(1.0)

    step = vmap(grad_and_value(loss), randomness="error")
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    momentum: Tensors = {}
    epoch_losses: list[list[float]] = [[] for _ in range(k)]
    model.train()
    try:
        for _ in range(epochs):
            index, weight, batch_rows = _epoch_batches(generators, sizes, steps, batch_size)
            rows = torch.arange(k)[:, None]
            x_epoch, y_epoch, w_epoch = x_all[rows, index], y_all[rows, index], weight.to(device)
            totals = torch.zeros(k, dtype=torch.float64)
            for j in range(steps):
                cut = slice(j * batch_size, (j + 1) * batch_size)
                grads, losses = step(params, x_epoch[:, cut], y_epoch[:, cut], w_epoch[:, cut])
                active = batch_rows[:, j] > 0
                _sgd_step(params, grads, momentum, active.to(device), optimizer, lr)
                totals += losses.detach().cpu().double() * batch_rows[:, j]
            for c in range(k):
                epoch_losses[c].append(float(totals[c]) / sizes[c])
    except RuntimeError as exc:  # an operation vmap cannot batch, or a random one
        raise NotVectorizable(f"vmap: {exc}") from exc
    return [({n: params[n][c] for n in names}, TrainResult(sizes[c] * epochs, tuple(epoch_losses[c])))
            for c in range(k)]


def _stack_padded(datas: Sequence[ClientData], rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, rows, ...) features and (K, rows) labels, each client's rows first, zeros after."""
    first = datas[0]
    x = first.x.new_zeros((len(datas), rows, *first.x.shape[1:]))
    y = first.y.new_zeros((len(datas), rows))
    for c, d in enumerate(datas):
        x[c, : len(d)] = d.x
        y[c, : len(d)] = d.y
    return x, y


def _epoch_batches(generators, sizes: Sequence[int], steps: int, batch_size: int):
    """One epoch's shuffled row order per client, padded to steps x batch_size: (row index
    (K, steps*batch_size), row weight 1/0, real rows per client and step (K, steps)).
    Each client's permutation is drawn from its own generator as local_train draws it."""
    k, width = len(sizes), steps * batch_size
    index = torch.zeros((k, width), dtype=torch.long)
    weight = torch.zeros((k, width))
    for c, (gen, n) in enumerate(zip(generators, sizes, strict=True)):
        index[c, :n] = torch.randperm(n, generator=gen)
        weight[c, :n] = 1.0
    starts = torch.arange(steps) * batch_size
    batch_rows = (torch.tensor(sizes)[:, None] - starts[None, :]).clamp(0, batch_size)
    return index, weight, batch_rows


@torch.no_grad()
def _sgd_step(params: Tensors, grads: Tensors, momentum: Tensors, active: torch.Tensor,
              cfg: OptimizerConfig, lr: float) -> None:
    """torch.optim.SGD's update (no dampening, no Nesterov) for the clients with a batch in
    this step; the others keep their weights and momentum. Without momentum or weight
    decay an idle client's gradient is exactly 0, so its weights stay bit for bit."""
    for name, p in params.items():
        g = grads[name]
        if cfg.weight_decay:
            g = g.add(p, alpha=cfg.weight_decay)
        if cfg.momentum:
            if name not in momentum:
                momentum[name] = g.clone()
            else:
                shape = (-1,) + (1,) * (p.dim() - 1)
                momentum[name] = torch.where(active.view(shape), momentum[name] * cfg.momentum + g, momentum[name])
            g = momentum[name]
        if cfg.weight_decay or cfg.momentum:
            g = g * active.view((-1,) + (1,) * (p.dim() - 1))
        p.add_(g, alpha=-lr)
