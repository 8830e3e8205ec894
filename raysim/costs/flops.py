"""Per-example FLOPs of the model a client actually runs, broken down by layer.

Measured with `torch.utils.flop_counter.FlopCounterMode` on a probe batch, so a
structurally pruned (smaller) model really costs less. Conventions:

- What counts is what FlopCounterMode counts: matrix products and convolutions
  (mm, addmm, bmm, convolution and their backward), a multiply-add being 2
  FLOPs. Bias adds, activations, normalisation, pooling, embedding lookups, the
  loss, mask enforcement and the optimizer step count 0.
- Training = forward + cross-entropy loss + backward. The backward is what
  autograd really runs: a weight gradient for every trainable weight, and an
  input gradient only where the layer's input needs one. So the first layer
  (whose input is data) costs 1x its forward in backward, every later layer 2x.
- nn.LSTM is counted analytically (`lstm_flops`): on this torch (2.13) a CPU
  float32 LSTM dispatches oneDNN's fused `aten.mkldnn_rnn_layer` (on CUDA
  `aten._cudnn_rnn`), neither in FlopCounterMode's registry, so it counts 0,
  while float64 or oneDNN-less runs decompose into per-step mm/addmm with
  slightly different totals. What FlopCounterMode sees inside an LSTM is
  discarded and the formula used instead, so the count does not depend on
  device or dtype.
- Layers are leaf modules that own parameters, named by their qualified name in
  the model. The total comes from one FlopCounterMode run of the whole step;
  each layer's share from replaying its recorded calls alone (see `_measure`
  for why); whatever the layers do not account for (functional matmuls in a
  forward) is `other`.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils._pytree import tree_leaves, tree_map_only
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.hooks import RemovableHandle

# Examples per probe run; per-example FLOPs do not depend on it, and 2 keeps
# BatchNorm in training mode well defined.
PROBE_BATCH = 2
_CACHE_CAPACITY = 256


@dataclass(frozen=True)
class FlopProfile:
    """FLOPs per example. Cached profiles are shared: treat `per_layer` as read-only."""

    per_layer: dict[str, float]
    other: float

    @property
    def total(self) -> float:
        return sum(self.per_layer.values()) + self.other

    def effective(self, densities: Mapping[str, float]) -> float:
        """FLOPs if each layer ran only its kept weights: per_layer * density (1.0 where
        not given) plus `other`. Raises ValueError for an unknown layer or a density
        outside [0, 1], so a misspelt name cannot silently count as dense."""
        unknown = sorted(set(densities) - set(self.per_layer))
        if unknown:
            raise ValueError(f"densities for unknown layers {unknown}; layers: {sorted(self.per_layer)}")
        for name, density in densities.items():
            if not 0.0 <= density <= 1.0:
                raise ValueError(f"density of layer '{name}' must be in [0, 1], got {density}")
        return sum(flops * densities.get(name, 1.0) for name, flops in self.per_layer.items()) + self.other


def training_flop_profile(model: nn.Module, example_input: torch.Tensor) -> FlopProfile:
    """Per-example FLOPs of one training step (forward + loss + backward).

    `example_input` is a batch (N >= 1) shaped and typed like the client's data;
    only its first example is used. The model is profiled on a deep copy, so its
    weights, gradients and BatchNorm statistics are untouched. Cached by
    architecture and per-example input shape/dtype.
    """
    return _cached_profile(model, example_input)


def architecture_signature(model: nn.Module) -> tuple:
    """What FLOPs depend on: every module's name, class and hyperparameters and every
    parameter's shape, dtype and trainability. Structured pruning changes it."""
    return tuple(
        (
            name,
            f"{type(module).__module__}.{type(module).__qualname__}",
            module.extra_repr(),
            tuple(
                (param_name, tuple(param.shape), str(param.dtype), param.requires_grad)
                for param_name, param in module.named_parameters(recurse=False)
            ),
        )
        for name, module in model.named_modules()
    )


def lstm_flops(lstm: nn.LSTM, steps: int, *, backward: bool, input_grad: bool) -> int:
    """Matmul FLOPs of `lstm` over `steps` (example, time step) pairs.

    Per pair, every weight matrix W (input-to-hidden, hidden-to-hidden and, with
    proj_size, the projection; all layers and directions) costs 2 * W.numel()
    forward. Backward adds a weight gradient (2 * W.numel(), if W is trainable)
    and an input gradient (2 * W.numel()) for each W, except the first layer's
    input-to-hidden matrices when the LSTM's input needs no gradient
    (`input_grad=False`). Gate nonlinearities and bias adds are not counted,
    as FlopCounterMode counts none for other layers either.
    """
    total = 0
    for name, weight in lstm.named_parameters():
        if not name.startswith("weight_"):
            continue
        matmul = 2 * weight.numel()
        total += matmul
        if backward:
            total += matmul if weight.requires_grad else 0
            is_first_input = name in ("weight_ih_l0", "weight_ih_l0_reverse")
            total += matmul if input_grad or not is_first_input else 0
    return total * steps


class _LayerCalls:
    """Forward hooks that keep the inputs of every call of a model's parameterised
    leaf modules (detached, with the same requires_grad) so each call can be replayed."""

    def __init__(self, model: nn.Module) -> None:
        self.inputs: dict[str, list[tuple]] = {}
        self._handles: list[RemovableHandle] = []
        for name, module in model.named_modules():
            if next(module.children(), None) is None and next(module.parameters(recurse=False), None) is not None:
                self.inputs[name] = []
                self._handles.append(module.register_forward_hook(self._recorder(name)))

    def _recorder(self, name: str) -> Callable[[nn.Module, tuple, object], None]:
        def record(module: nn.Module, inputs: tuple, output: object) -> None:
            self.inputs[name].append(tree_map_only(torch.Tensor, _detached_like, inputs))

        return record

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()


def _detached_like(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().requires_grad_(tensor.requires_grad)


def _replayed_flops(module: nn.Module, inputs: tuple) -> int:
    """What FlopCounterMode counts for one call of `module` alone, backward included;
    autograd computes the input gradient exactly when the recorded input required one,
    as it did inside the model."""
    with FlopCounterMode(display=False) as counter, torch.enable_grad():
        output = module(*inputs)
        outputs = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.requires_grad]
        if outputs:
            torch.autograd.backward(outputs, [torch.ones_like(t) for t in outputs])
    return counter.get_total_flops()


def _lstm_call_flops(lstm: nn.LSTM, inputs: tuple) -> int:
    x = inputs[0]
    data = x.data if isinstance(x, PackedSequence) else x
    # A packed sequence holds one row per (example, step); a padded one is (..., features).
    steps = data.shape[0] if isinstance(x, PackedSequence) else data.shape[:-1].numel()
    return lstm_flops(lstm, steps, backward=True, input_grad=data.requires_grad)


def _measure(model: nn.Module, example_input: torch.Tensor) -> FlopProfile:
    if example_input.dim() == 0 or example_input.shape[0] < 1:
        raise ValueError(f"example_input must be a batch with at least one example, got shape {tuple(example_input.shape)}")
    probe_model = copy.deepcopy(model).train(True)
    probe_input = example_input[:1].expand(PROBE_BATCH, *example_input.shape[1:]).clone()
    calls = _LayerCalls(probe_model)
    with FlopCounterMode(display=False) as counter:
        logits = probe_model(probe_input)
        targets = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        F.cross_entropy(logits, targets).backward()
    calls.stop()

    # FlopCounterMode's per-module counts are right for the forward but not for the
    # backward of branching graphs: its ModuleTracker keeps a module "active" until
    # the gradient of the module's input is complete, so in a residual block the
    # shortcut conv is also charged for the whole main branch's backward. Only the
    # model-wide total is taken from this run; each layer is measured by replaying
    # its recorded calls alone.
    modules = dict(probe_model.named_modules())
    measured, per_layer = {}, {}
    for name, layer_inputs in calls.inputs.items():
        module = modules[name]
        measured[name] = sum(_replayed_flops(module, inputs) for inputs in layer_inputs)
        per_layer[name] = (
            sum(_lstm_call_flops(module, inputs) for inputs in layer_inputs)
            if isinstance(module, nn.LSTM)
            else measured[name]
        )
    other = counter.get_total_flops() - sum(measured.values())
    return FlopProfile(
        per_layer={name: flops / PROBE_BATCH for name, flops in per_layer.items()},
        other=other / PROBE_BATCH,
    )


_cache: OrderedDict[tuple, FlopProfile] = OrderedDict()


def _cached_profile(model: nn.Module, example_input: torch.Tensor) -> FlopProfile:
    key = (architecture_signature(model), tuple(example_input.shape[1:]), example_input.dtype)
    profile = _cache.get(key)
    if profile is None:
        profile = _measure(model, example_input)
        _cache[key] = profile
        if len(_cache) > _CACHE_CAPACITY:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return profile
