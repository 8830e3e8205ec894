"""Guidance: which coordinates the federation moves, from clients' squared deviations.

Clients send `D_k = (theta_k - theta_ref)**2` as a `WeightedSum`; its mean is the
sample-weighted guidance `G`, normalised per tensor before any quantile is taken
(docs/method.md sections 1 and 3).
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from raysim.engine.stats import WeightedSum

Tensors = dict[str, torch.Tensor]
NormaliseMethod = Literal["minmax", "robust"]

# torch.quantile refuses inputs with more elements than this.
TORCH_QUANTILE_LIMIT = 2**24


def _quantiles(flat: torch.Tensor, qs: tuple[float, ...]) -> list[float]:
    """Quantiles with torch.quantile's default linear interpolation, at any size."""
    if flat.numel() < TORCH_QUANTILE_LIMIT:
        return torch.quantile(flat, torch.tensor(qs, dtype=flat.dtype, device=flat.device)).tolist()
    out = []
    n = flat.numel()
    for q in qs:
        position = q * (n - 1)
        lower = math.floor(position)
        low = torch.kthvalue(flat, lower + 1).values.item()
        frac = position - lower
        high = torch.kthvalue(flat, lower + 2).values.item() if frac > 0 else low
        out.append(low + frac * (high - low))
    return out


def _normalise_one(name: str, x: torch.Tensor, method: NormaliseMethod) -> torch.Tensor:
    x = x.detach().to(torch.float32)
    if x.numel() == 0:
        return x.clone()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"guidance tensor '{name}' holds NaN or inf; cannot normalise it")
    flat = x.reshape(-1)
    if method == "minmax":
        low, high = flat.min(), flat.max()
        spread = high - low
        centre = low
    else:
        q25, median, q75 = _quantiles(flat, (0.25, 0.5, 0.75))
        spread = torch.tensor(q75 - q25, dtype=torch.float32)
        centre = torch.tensor(median, dtype=torch.float32)
    # A flat tensor carries no ranking information: all zeros rather than 0/0.
    if not bool(spread > 0) or not bool(torch.isfinite(spread)):
        return torch.zeros_like(x)
    out = (x - centre) / spread
    if not bool(torch.isfinite(out).all()):
        # A spread so small that the ratio overflows float32: treat as flat too.
        return torch.zeros_like(x)
    return out


def normalise(tensors: Tensors, method: NormaliseMethod) -> Tensors:
    """Normalise each tensor on its own, as float32.

    minmax: (x - min) / (max - min), in [0, 1].
    robust: (x - median) / IQR, median at 0 (quantiles interpolated linearly).
    A tensor with no spread (max == min, or IQR == 0) maps to zeros, so the
    result never holds NaN or inf; a non-finite input is a ValueError.
    """
    if method not in ("minmax", "robust"):
        raise ValueError(f"unknown normalisation '{method}'; use 'minmax' or 'robust'")
    return {name: _normalise_one(name, x, method) for name, x in tensors.items()}


def guidance_from_sum(stat: WeightedSum, method: NormaliseMethod) -> Tensors:
    """Normalised sample-weighted mean of the clients' squared deviations."""
    return normalise(stat.mean(), method)


def update_running(previous: Tensors | None, fresh: Tensors, alpha: float) -> Tensors:
    """G_t = alpha * G_{t-1} + (1 - alpha) * fresh; with no G_{t-1}, G_t = fresh.

    Both must cover the same names with the same shapes: after a structured step
    the caller slices G_{t-1} down to the surviving coordinates first.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if previous is None:
        return {name: x.detach().to(torch.float32).clone() for name, x in fresh.items()}
    if previous.keys() != fresh.keys():
        raise ValueError(
            f"running guidance covers {sorted(previous)} but the fresh guidance covers {sorted(fresh)}"
        )
    out = {}
    for name, new in fresh.items():
        old = previous[name]
        if old.shape != new.shape:
            raise ValueError(
                f"guidance tensor '{name}': running shape {tuple(old.shape)} != fresh shape {tuple(new.shape)}"
            )
        out[name] = alpha * old.to(torch.float32) + (1.0 - alpha) * new.to(torch.float32)
    return out
