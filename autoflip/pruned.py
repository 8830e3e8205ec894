"""What every pruning method shares: the prunable names of the model in hand,
and the per-round bookkeeping (sparsity, density, churn)."""
from __future__ import annotations

import math

import torch

from autoflip.layers import prunable_weight_names, require_prunable
from autoflip.masks import jaccard, overall_sparsity
from autoflip.structured import replay
from raysim.algorithms.fedavg import FedAvg
from raysim.algorithms.server_update import MOMENTUM_PREFIX
from raysim.config import ExperimentConfig
from raysim.engine.api import Broadcast, ServerState
from raysim.engine.runner import ModelFactory
from raysim.engine.stats import Tensors

MASK_PREFIX = "mask/"


def state_masks(state: ServerState) -> Tensors:
    return state.group(MASK_PREFIX)


def with_masks(state: ServerState, masks: Tensors) -> ServerState:
    """The state with `masks` installed and enforced on the weights and the server momentum."""
    buffers = state.with_group(MASK_PREFIX, masks).buffers
    weights = dict(state.weights)
    for name, mask in masks.items():
        weights[name] = weights[name] * mask
        if MOMENTUM_PREFIX + name in buffers:
            buffers[MOMENTUM_PREFIX + name] = buffers[MOMENTUM_PREFIX + name] * mask
    return ServerState(state.round, weights, buffers, state.meta)


def parameter_count(weights: Tensors, names: list[str], masks: Tensors) -> int:
    """Parameters the model really carries: kept entries of masked tensors, all of the others."""
    return sum(int(masks[k].sum()) if k in masks else weights[k].numel() for k in names)


class PrunedFedAvg(FedAvg):
    """FedAvg whose server keeps a mask (and possibly a smaller architecture)."""

    # Workers rebuild a structurally pruned architecture from its JSON record.
    rebuild_model = staticmethod(replay)

    def __init__(self, cfg: ExperimentConfig, model_factory: ModelFactory, example_input: torch.Tensor):
        super().__init__(cfg)
        self.pruning = cfg.algorithm.pruning
        self.model_factory = model_factory
        self.example_input = example_input
        dense = model_factory(None)
        self.dense_params = sum(p.numel() for p in dense.parameters())
        prunable = require_prunable(dense, cfg.model.name, cfg.algorithm.name)
        self.dense_prunable = sum(p.numel() for n, p in dense.named_parameters() if n in prunable)
        self._names: dict[str, tuple[list[str], list[str]]] = {}

    def broadcast(self, state: ServerState) -> Broadcast:
        """The weights with the mask (clients train under it and upload only kept entries) and,
        after structured pruning, the architecture record workers rebuild the model from."""
        return Broadcast(weights=state.weights, masks=state_masks(state), arch=state.meta.get("arch"))

    def _arch_names(self, arch: list | None) -> tuple[list[str], list[str]]:
        """(prunable weight names, parameter names) of an architecture, built once."""
        key = repr(arch)
        if key not in self._names:
            model = self.model_factory(arch)
            self._names[key] = (prunable_weight_names(model), [n for n, _ in model.named_parameters()])
        return self._names[key]

    def prunable_names(self, arch: list | None) -> list[str]:
        return self._arch_names(arch)[0]

    def metrics(self, state: ServerState, previous: Tensors | None) -> dict[str, float]:
        masks = state_masks(state)
        names = self._arch_names(state.meta.get("arch"))[1]
        return {
            "sparsity": overall_sparsity(masks),
            "param_density": parameter_count(state.weights, names, masks) / self.dense_params,
            # What cost-matched unstructured baselines keep: prunable weights, against the dense model's.
            "prunable_density": parameter_count(state.weights, self.prunable_names(state.meta.get("arch")), masks)
            / self.dense_prunable,
            "mask_churn": jaccard(previous, masks) if previous else math.nan,
        }
