"""Bring your own model: a small CNN of your own, run on Fashion-MNIST by raysim.

    python examples/custom_model.py                 # Ray backend, a few rounds
    python examples/custom_model.py backend.name=inprocess rounds=3

A model plug-in is called with (input_shape, num_classes, cfg) and returns an
nn.Module that maps a batch to logits; its last nn.Linear is the output layer (which
pruning never touches). The same class works from YAML as
`model.name: custom_model:SmallCNN` with this folder on PYTHONPATH.
"""
from __future__ import annotations

import sys

from torch import nn

import raysim


class SmallCNN(nn.Module):
    def __init__(self, input_shape, num_classes, cfg):
        super().__init__()
        channels = input_shape[0]
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                      nn.Flatten())
        self.classifier = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


CONFIG = {
    "name": "custom-model", "rounds": 5,
    "data": {"dataset": "fashion_mnist", "num_clients": 20, "partition": {"scheme": "dirichlet", "alpha": 0.5},
             "max_train_samples": 6000, "max_test_samples": 1000},
    "clients": {"per_round": 5, "local_epochs": 2, "batch_size": 20,
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
    "eval": {"every": 1, "clients": False},
}


def main(overrides: list[str]) -> raysim.RunResult:
    # This file, imported under its own name: the run folder's config.yaml then names the
    # class as custom_model:SmallCNN, which --resume and the Ray workers can find again.
    import custom_model

    result = raysim.run(CONFIG, model=custom_model.SmallCNN, overrides=overrides)
    print(f"final accuracy {result.summary['final_accuracy']:.4f}; run folder {result.run_dir}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
