"""Structured pruning (docs/method.md section 2): score units, pick the weakest, remove them physically.

The server decides, clients replay:

    scores = unit_scores(model, guidance, example_input)
    change = prune_units(model, select_removals(scores, q_s), example_input)
    # broadcast change.record (plain JSON); a client rebuilds the architecture with
    replay(build_model(cfg, shape, classes), record_so_far, example_input)
    # and any name -> tensor dict (weights, guidance, masks, momentum) follows with
    slice_state(tensors, change.keep)

Unit layers. Scores, removals and records are keyed by *unit layer*: a set of
output units that can only be removed together.
- A Conv / Linear layer (never the output layer) is one unit layer, keyed by its
  qualified name; a unit is a filter / neuron.
- Residual adds couple output channels: ResNet's stem and the first block's conv2
  feed one add, so channel c goes from both or from neither. Such a coupled set is
  one unit layer keyed by its first member in registration order (the group
  root); the other members get no key of their own, and a removal request naming
  one of them is refused rather than silently merged. A coupled unit's score is
  the mean guidance over the union of its fan-in slices (W[c] of every member),
  i.e. the fan-in mean of the channel the add really produces.
- Layer k of an nn.LSTM `name` is the unit layer `name.lk` (its hidden units).
  PyTorch gives all layers of one nn.LSTM the same hidden_size, so each call of
  prune_units must remove the same number of units from every layer of an LSTM.
  select_removals does that by itself (same width, same fraction), while the
  units chosen stay per layer (unit j of layer 0 and of layer 1 are unrelated).

Coupled slices (next layer's input channels / columns, BatchNorm channels,
residual partners) are found by Torch-Pruning's dependency graph, which needs a
traced forward: hence `example_input`, a batch shaped like the client's data.
The graph traces one example in eval mode; the model's train/eval flags are
restored, so no BatchNorm statistic moves. Torch-Pruning 1.6's own LSTM pruner
is unusable (see lstm_pruning), so LSTM surgery is ours and the graph only
prunes what consumes the last LSTM layer's output.
"""
from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autoflip import lstm_pruning
from autoflip.layers import PRUNABLE_TYPES, output_layer_name, prunable_layer_names
from autoflip.masks import prune_count

Keep = dict[str, dict[int, torch.Tensor]]
RecordEntry = dict  # {"layer": unit layer key, "remove": sorted unit indices at application time}



@dataclass(frozen=True)
class StructureChange:
    """What one prune_units call did.

    record: [{"layer": key, "remove": [unit indices]}, ...] in application order;
        indices are relative to the widths when the entry is applied. Records of
        successive calls concatenate and replay in order.
    keep: for every parameter and buffer whose shape changed, the kept indices per
        changed dim, relative to the shapes before this call.
    """

    record: list[RecordEntry]
    keep: Keep


@dataclass(frozen=True)
class _UnitLayer:
    module_name: str  # the Conv / Linear group root, or the nn.LSTM
    lstm_layer: int | None
    # (weight name, gate blocks): the unit's fan-in is row j of every block of each weight.
    fan_in: tuple[tuple[str, int], ...]
    coupled: tuple[str, ...]  # other layers that lose the same output channels


def unit_scores(
    model: nn.Module, guidance: Mapping[str, torch.Tensor], example_input: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per unit layer, a score per output unit: the mean guidance over the unit's fan-in
    (a conv filter W[c], a neuron's row W[j], an LSTM unit's four gate rows of
    weight_ih_lk and weight_hh_lk; pooled over coupled layers). `guidance` is keyed by
    parameter name with parameter shapes."""
    layers = _unit_layers(model, _dependency_graph(model, example_input))
    params = dict(model.named_parameters())
    scores = {}
    for key, layer in layers.items():
        total: torch.Tensor | int = 0
        count = 0
        for param_name, gates in layer.fan_in:
            if param_name not in guidance:
                raise KeyError(f"guidance has no entry for '{param_name}'")
            values = guidance[param_name].detach()
            if values.shape != params[param_name].shape:
                raise ValueError(
                    f"guidance for '{param_name}' has shape {tuple(values.shape)}, "
                    f"the parameter {tuple(params[param_name].shape)}"
                )
            rows = values.reshape(gates, values.shape[0] // gates, -1)
            total = total + rows.sum(dim=(0, 2))
            count += gates * rows.shape[2]
        scores[key] = total / count
    return scores


def select_removals(
    scores: Mapping[str, torch.Tensor], fraction: float, min_keep: int = 1
) -> dict[str, list[int]]:
    """Per unit layer, the floor(fraction * units) lowest-scoring units (sorted), so that
    at least `min_keep` units stay; among equal scores the lower index goes first."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if isinstance(min_keep, bool) or not isinstance(min_keep, numbers.Integral) or min_keep < 1:
        raise ValueError(f"min_keep must be an integer >= 1, got {min_keep}")
    removals = {}
    for key, score in scores.items():
        if score.dim() != 1:
            raise ValueError(f"scores for '{key}' must be one value per unit, got shape {tuple(score.shape)}")
        if not bool(torch.isfinite(score).all()):
            raise ValueError(f"scores for '{key}' are not all finite; they cannot be ranked")
        units = score.numel()
        count = min(prune_count(fraction, units), max(units - min_keep, 0))
        order = torch.sort(score.detach().cpu(), stable=True).indices
        removals[key] = sorted(order[:count].tolist())
    return removals


def prune_units(
    model: nn.Module, removals: Mapping[str, Sequence[int]], example_input: torch.Tensor
) -> StructureChange:
    """Remove the units `removals` names (unit layer key -> indices at the current widths)
    physically and in place, with every slice coupled to them. Everything is validated
    before the model is touched; empty lists are skipped."""
    graph = _dependency_graph(model, example_input)
    layers = _unit_layers(model, graph)
    record = _planned_record(model, layers, removals)
    keep = _apply(model, graph, layers, record)
    return StructureChange(record=record, keep=keep)


def remove_weakest_units(
    model: nn.Module, guidance: Mapping[str, torch.Tensor], fraction: float, example_input: torch.Tensor
) -> StructureChange:
    """The structured step every hybrid method takes: score units by `guidance`, remove the
    `fraction` weakest of each layer from `model` (loaded with the weights to prune)."""
    removals = select_removals(unit_scores(model, guidance, example_input), fraction)
    return prune_units(model, removals, example_input)


def replay(model: nn.Module, record: Sequence[RecordEntry], example_input: torch.Tensor) -> nn.Module:
    """Apply `record` (one or several prune_units records, concatenated) in order to a
    freshly built original model, in place; returns the model, now with the pruned
    architecture (parameter names and shapes as on the server)."""
    for entry in record:
        if not isinstance(entry, Mapping) or set(entry) != {"layer", "remove"}:
            raise ValueError(f"record entries are {{'layer': ..., 'remove': [...]}}, got {entry!r}")
    graph = _dependency_graph(model, example_input)
    _apply(model, graph, _unit_layers(model, graph), record)
    return model


def slice_state(tensors: Mapping[str, torch.Tensor], keep: Keep) -> dict[str, torch.Tensor]:
    """Slice tensors keyed like the model's parameters / buffers as a change sliced the
    model; those whose names are not in `keep` pass unchanged."""
    sliced = {}
    for name, tensor in tensors.items():
        for dim, index in keep.get(name, {}).items():
            tensor = tensor.index_select(dim, index.to(tensor.device))
        sliced[name] = tensor
    return sliced


def _dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    # Torch-Pruning's tracer calls model.eval() and never restores the flags.
    training = [(module, module.training) for module in model.modules()]
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model,
                # A tuple, so the tracer calls model(x) rather than trying model(*x) first.
                example_inputs=(example_input[:1],),
                customized_pruners={nn.LSTM: lstm_pruning.LastLayerUnitsPruner()},
                verbose=False,
            )
    finally:
        for module, was_training in training:
            module.training = was_training


def _unit_layers(model: nn.Module, graph: tp.DependencyGraph) -> dict[str, _UnitLayer]:
    modules = dict(model.named_modules())
    output = output_layer_name(model)
    layers: dict[str, _UnitLayer] = {}
    claimed: set[str] = set()
    for name in prunable_layer_names(model):
        if name in claimed:
            continue
        module = modules[name]
        coupled = _layers_sharing_out_channels(model, graph, module)
        if output in coupled:
            raise ValueError(f"'{name}' shares its output channels with the output layer '{output}'")
        if isinstance(module, nn.LSTM):
            lstm_pruning.check_supported(name, module)
            if coupled != [name]:
                raise NotImplementedError(f"the output of '{name}' is coupled to {coupled[1:]}")
            for k in range(module.num_layers):
                fan_in = tuple((f"{name}.weight_{kind}_l{k}", lstm_pruning.GATES) for kind in ("ih", "hh"))
                layers[f"{name}.l{k}"] = _UnitLayer(name, k, fan_in, coupled=())
            continue
        if any(isinstance(modules[member], nn.LSTM) for member in coupled):
            raise NotImplementedError(f"the output channels of '{name}' are coupled to an nn.LSTM: {coupled}")
        claimed.update(coupled)
        layers[name] = _UnitLayer(name, None, tuple((f"{member}.weight", 1) for member in coupled), tuple(coupled[1:]))
    return layers


def _layers_sharing_out_channels(model: nn.Module, graph: tp.DependencyGraph, module: nn.Module) -> list[str]:
    """Conv / Linear / LSTM layers whose output channels go whenever `module`'s do
    (`module` included), in registration order."""
    order = {layer: index for index, layer in enumerate(model.modules())}
    names = {layer: name for name, layer in model.named_modules()}
    group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, [0])
    members = {
        dep.target.module
        for dep, _ in group
        if isinstance(dep.target.module, PRUNABLE_TYPES) and graph.is_out_channel_pruning_fn(dep.handler)
    }
    return [names[member] for member in sorted(members, key=order.__getitem__)]


def _width(module: nn.Module, layer: _UnitLayer) -> int:
    if layer.lstm_layer is not None:
        return lstm_pruning.layer_width(module, layer.lstm_layer)
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _checked_indices(key: str, remove: object, width: int) -> list[int]:
    if isinstance(remove, (str, bytes)) or not isinstance(remove, Sequence):
        raise ValueError(f"removals for '{key}' must be a list of unit indices, got {remove!r}")
    if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) for i in remove):
        raise ValueError(f"removals for '{key}' must be integers, got {list(remove)!r}")
    indices = sorted(int(i) for i in remove)
    if len(set(indices)) != len(indices):
        raise ValueError(f"removals for '{key}' repeat a unit: {indices}")
    if indices and not 0 <= indices[0] <= indices[-1] < width:
        raise ValueError(f"removals for '{key}' must lie in [0, {width}), got {indices}")
    if len(indices) >= width:
        raise ValueError(f"removals for '{key}' would remove all {width} units")
    return indices


def _planned_record(
    model: nn.Module, layers: Mapping[str, _UnitLayer], removals: Mapping[str, Sequence[int]]
) -> list[RecordEntry]:
    modules = dict(model.named_modules())
    roots = {member: key for key, layer in layers.items() for member in layer.coupled}
    for key in removals:
        if key in roots:
            root = roots[key]
            raise ValueError(f"'{key}' shares its output channels with '{root}': request removals on '{root}'")
        if key not in layers:
            raise ValueError(f"unknown unit layer '{key}'; prunable unit layers: {list(layers)}")
    record = []
    removed_per_lstm: dict[str, set[int]] = {}
    for key, layer in layers.items():
        module = modules[layer.module_name]
        indices = _checked_indices(key, removals.get(key, []), _width(module, layer))
        if layer.lstm_layer is not None:
            removed_per_lstm.setdefault(layer.module_name, set()).add(len(indices))
        if indices:
            record.append({"layer": key, "remove": indices})
    for name, counts in removed_per_lstm.items():
        if len(counts) > 1:
            raise ValueError(
                f"every layer of '{name}' must lose the same number of units (one hidden_size); "
                f"got counts {sorted(counts)}"
            )
    return record


def _apply(
    model: nn.Module, graph: tp.DependencyGraph, layers: Mapping[str, _UnitLayer], record: Sequence[RecordEntry]
) -> Keep:
    modules = dict(model.named_modules())
    keep: Keep = {}
    for entry in record:
        key = entry["layer"]
        if key not in layers:
            raise ValueError(f"record names unknown unit layer '{key}'; prunable unit layers: {list(layers)}")
        layer = layers[key]
        module = modules[layer.module_name]
        remove = _checked_indices(key, entry["remove"], _width(module, layer))
        if layer.lstm_layer is None:
            step = _prune_group(model, graph, module, remove)
        else:
            # Computed before the surgery, which changes the widths it reads.
            step = {
                f"{layer.module_name}.{param_name}": dims
                for param_name, dims in lstm_pruning.unit_keep(module, layer.lstm_layer, remove).items()
            }
            if layer.lstm_layer == module.num_layers - 1:
                step.update(_prune_group(model, graph, module, remove))  # also runs the surgery
            else:
                lstm_pruning.remove_units(module, layer.lstm_layer, remove)
        _compose(keep, step)
    for name, module in modules.items():
        if isinstance(module, nn.LSTM):
            lstm_pruning.sync_hidden_size(name, module)
    return keep


def _prune_group(model: nn.Module, graph: tp.DependencyGraph, module: nn.Module, remove: list[int]) -> Keep:
    """Remove output channels `remove` of `module` and everything coupled to them; the
    kept indices of each changed tensor, except an nn.LSTM's own (lstm_pruning's job)."""
    names = {layer: name for name, layer in model.named_modules()}
    group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, remove)
    # The group also holds the graph's placeholder ops (ReLU, add, flatten): not in the model.
    touched = [
        (names[dep.target.module], dep.target.module, idxs)
        for dep, idxs in group
        if dep.target.module in names and not isinstance(dep.target.module, nn.LSTM)
    ]
    if len({name for name, _, _ in touched}) != len(touched):
        raise NotImplementedError(f"a layer is pruned on two dims by one group: {[name for name, _, _ in touched]}")
    shapes_before = {
        (name, tensor_name): tuple(tensor.shape)
        for name, layer, _ in touched
        for tensor_name, tensor in _own_tensors(layer)
    }
    group.prune()
    keep: Keep = {}
    for name, layer, idxs in touched:
        removed = set(idxs)
        for tensor_name, tensor in _own_tensors(layer):
            before = shapes_before[name, tensor_name]
            for dim, (old_size, new_size) in enumerate(zip(before, tensor.shape)):
                if old_size == new_size:
                    continue
                kept = [i for i in range(old_size) if i not in removed]
                if len(kept) != new_size:
                    raise RuntimeError(
                        f"'{name}.{tensor_name}' dim {dim} went {old_size} -> {new_size}, not -{len(removed)}"
                    )
                keep.setdefault(f"{name}.{tensor_name}", {})[dim] = torch.tensor(kept, dtype=torch.long)
    return keep


def _own_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    return itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))


def _compose(keep: Keep, step: Keep) -> None:
    """Fold a later slicing into `keep`, so it stays relative to the shapes before the first."""
    for name, dims in step.items():
        for dim, index in dims.items():
            earlier = keep.setdefault(name, {}).get(dim)
            keep[name][dim] = index if earlier is None else earlier[index]
