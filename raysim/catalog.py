"""The model and algorithm registries, with raysim's built-ins listed by import path.

Their code imports torch (over a second); naming each built-in here with what validation
needs to know about it lets config validation, `raysim plugins` and `raysim run --help`
answer without importing it. `get` imports it on first use. (Datasets, partitioners and
device profiles need no torch: their registries live with their code.)
"""
from __future__ import annotations

from raysim.registry import Registry

MODELS = Registry("model", "model.name")
"""Model plug-ins. Contract: `builder(input_shape, num_classes, cfg) -> nn.Module`, where
`input_shape` is one example's shape without the batch dimension (C, H, W for images,
(features,) for vectors, (seq_len,) for token ids), `num_classes` the label count (for
next-character models, the vocabulary) and `cfg` the run's ModelConfig (hidden, layers,
embedding). The module maps a batch to logits (N, num_classes); its last nn.Linear is
the output layer, which pruning never touches. Registered with `inputs`, the input
kinds it takes ("vector", "image", "sequence"), so a config that cannot work is refused
before any work; an import-path model is checked when it is built."""

for _name, _inputs in (("logreg", ("vector", "image")), ("mlp", ("vector", "image")), ("twocnn", ("image",)),
                       ("cifar_cnn", ("image",)), ("resnet", ("image",)), ("char_lstm", ("sequence",))):
    MODELS.register_lazy(_name, f"raysim.models.zoo:build_{_name}", inputs=_inputs)

ALGORITHMS = Registry("algorithm", "algorithm.name")
"""Algorithm plug-ins; the contract is in raysim/algorithms/__init__.py."""

for _name, _path in (("fedavg", "fedavg:FedAvg"), ("fedprox", "fedprox:FedProx"), ("fedadam", "fedopt:FedAdam"),
                     ("fedyogi", "fedopt:FedYogi"), ("fedadagrad", "fedopt:FedAdagrad"),
                     ("scaffold", "scaffold:Scaffold")):
    ALGORITHMS.register_lazy(_name, f"raysim.algorithms.{_path}")
