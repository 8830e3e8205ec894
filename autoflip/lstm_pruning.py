"""Removing hidden units from an nn.LSTM, one layer at a time.

Torch-Pruning 1.6's LSTM pruner only handles num_layers == 1 (and slices
weight_hh twice on one dim), so the surgery lives here. Hidden unit j of layer k
owns gate rows j, H+j, 2H+j, 3H+j of weight_ih_lk, weight_hh_lk and both biases;
its state is read by column j of weight_hh_lk, and by column j of
weight_ih_l{k+1} or, after the last layer, by whatever consumes the LSTM's
output (left to the dependency graph through `LastLayerUnitsPruner`).

PyTorch gives every layer of one nn.LSTM the same hidden_size, so a layer may
be narrower than the others only between two removals; `sync_hidden_size`
checks that all layers agree again and sets hidden_size.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

GATES = 4  # input, forget, cell, output

Keep = dict[str, dict[int, torch.Tensor]]


def check_supported(name: str, lstm: nn.LSTM) -> None:
    """Unit removal is defined here for unidirectional LSTMs without projections."""
    if lstm.bidirectional or lstm.proj_size:
        raise NotImplementedError(
            f"structured pruning of '{name}' needs a unidirectional nn.LSTM without proj_size"
        )


def layer_width(lstm: nn.LSTM, layer: int) -> int:
    """Hidden units of `layer` now; read from its weights, as they may briefly differ between layers."""
    return getattr(lstm, f"weight_hh_l{layer}").shape[1]


def unit_keep(lstm: nn.LSTM, layer: int, remove: Sequence[int]) -> Keep:
    """Kept indices, per parameter name relative to the module and per changed dim,
    when hidden units `remove` of `layer` go (the consumer after the last layer excluded)."""
    width = layer_width(lstm, layer)
    removed = set(remove)
    kept = torch.tensor([j for j in range(width) if j not in removed], dtype=torch.long)
    gate_rows = torch.cat([kept + gate * width for gate in range(GATES)])
    keep: Keep = {f"weight_ih_l{layer}": {0: gate_rows}, f"weight_hh_l{layer}": {0: gate_rows, 1: kept}}
    if lstm.bias:
        keep[f"bias_ih_l{layer}"] = {0: gate_rows}
        keep[f"bias_hh_l{layer}"] = {0: gate_rows}
    if layer + 1 < lstm.num_layers:
        keep[f"weight_ih_l{layer + 1}"] = {1: kept}
    return keep


def remove_units(lstm: nn.LSTM, layer: int, remove: Sequence[int]) -> Keep:
    """Remove hidden units `remove` of `layer` in place; returns what `unit_keep` returns."""
    keep = unit_keep(lstm, layer, remove)
    for param_name, dims in keep.items():
        old = getattr(lstm, param_name)
        data = old.detach()
        grad = old.grad
        for dim, index in dims.items():
            data = data.index_select(dim, index.to(data.device))
            grad = None if grad is None else grad.index_select(dim, index.to(grad.device))
        new = nn.Parameter(data.clone(), requires_grad=old.requires_grad)
        new.grad = grad
        # nn.LSTM.__setattr__ also refreshes _flat_weights, which forward reads.
        setattr(lstm, param_name, new)
    return keep


def sync_hidden_size(name: str, lstm: nn.LSTM) -> None:
    widths = [layer_width(lstm, layer) for layer in range(lstm.num_layers)]
    if len(set(widths)) != 1:
        raise ValueError(
            f"layers of '{name}' ended with hidden widths {widths}; nn.LSTM needs one hidden_size, "
            "so every layer must lose the same number of units"
        )
    lstm.hidden_size = widths[0]
    # The replaced weights no longer share cuDNN's single buffer; a no-op elsewhere.
    lstm.flatten_parameters()


class LastLayerUnitsPruner(tp.pruner.function.BasePruningFunc):
    """Lets the dependency graph treat an LSTM's output features, the last layer's
    hidden units, as its out channels, so it prunes their consumers."""

    TARGET_MODULES = nn.LSTM

    def prune_out_channels(self, layer: nn.LSTM, idxs: Sequence[int]) -> nn.LSTM:
        remove_units(layer, layer.num_layers - 1, idxs)
        return layer

    def prune_in_channels(self, layer: nn.LSTM, idxs: Sequence[int]) -> nn.LSTM:
        raise NotImplementedError("the input features of an nn.LSTM are never pruned")

    def get_out_channels(self, layer: nn.LSTM) -> int:
        return layer_width(layer, layer.num_layers - 1)

    def get_in_channels(self, layer: nn.LSTM) -> int:
        return layer.input_size
