"""Which layers pruning touches: the policy of this package, not of the model zoo.

Conv / Linear / LSTM layers may be pruned, except the output layer (the last
nn.Linear in registration order, which raysim's zoo models name `classifier`):
removing classes' logits would change the task. Norm layers, embeddings and biases
are never pruned (docs/method.md section 2).
"""
from __future__ import annotations

from torch import nn

from raysim.config import ConfigError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LSTM)


def output_layer_name(model: nn.Module) -> str:
    """Qualified name of the final classifier: the last nn.Linear in registration order."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear output layer")
    return names[-1]


def prunable_layer_names(model: nn.Module) -> list[str]:
    """Conv / Linear / LSTM layers that pruning may touch: all but the output layer."""
    output = output_layer_name(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES) and name != output
    ]


def prunable_weight_names(model: nn.Module) -> list[str]:
    """Names of the weights masks cover: `.weight` of the prunable Conv/Linear layers
    and the weight_ih/weight_hh matrices of LSTMs; never biases, norm layers,
    embeddings or the output layer."""
    names = []
    for layer in prunable_layer_names(model):
        module = model.get_submodule(layer)
        prefix = f"{layer}." if layer else ""
        if isinstance(module, nn.RNNBase):
            names += [
                prefix + param
                for param, _ in module.named_parameters(recurse=False)
                if param.startswith(("weight_ih_l", "weight_hh_l"))
            ]
        else:
            names.append(prefix + "weight")
    return names


def require_prunable(model: nn.Module, model_name: str, algorithm: str) -> list[str]:
    """The model's prunable weight names; a model with none cannot be pruned (a config error)."""
    names = prunable_weight_names(model)
    if not names:
        raise ConfigError(f"algorithm.name={algorithm!r} prunes hidden Conv/Linear/LSTM layers, never the output "
                          f"layer; model.name={model_name!r} has none: choose a model with a hidden layer "
                          "(mlp, twocnn, cifar_cnn, resnet, char_lstm)")
    return names
