"""The model zoo: every model the simulator trains, built from plain nn modules.

Models are pruned later, structurally with Torch-Pruning's dependency graph and
unstructurally with masks, so each one is made only of standard layers
(Conv2d, BatchNorm2d, Linear, LSTM, Embedding) called as modules; residual adds
between modules are the only tensor arithmetic in a forward.

Naming convention: every zoo model registers its final classifier Linear as
`classifier`, and registers it last. Pruning (autoflip.layers) finds the output
layer by the second part (the last nn.Linear in registration order), so it also
works on models built elsewhere that follow it. All weights use torch's default initialisation,
so a model built under `torch.manual_seed(s)` is the same for the same `s`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from raysim.catalog import MODELS  # the names, listed by import path (build_<name> below)
from raysim.config import ConfigError, ModelConfig

ImageShape = tuple[int, int, int]



class LogisticRegression(nn.Module):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(x))


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: int, layers: int, num_classes: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]
        for i in range(layers):
            blocks += [nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TwoCNN(nn.Module):
    """The AutoFLIP paper's CNN: two 5x5 convs with 2x2 max-pooling, fc 512, fc classes."""

    def __init__(self, shape: ImageShape, num_classes: int) -> None:
        super().__init__()
        channels, height, width = shape
        self.conv1 = nn.Conv2d(channels, 32, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 512)
        self.relu3 = nn.ReLU()
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.classifier(self.relu3(self.fc1(self.flatten(x))))


class CifarCNN(nn.Module):
    """A small VGG-style CIFAR CNN: (conv3x3 32) x2, pool, (conv3x3 64) x2, pool, fc 384, fc classes.

    About 1.64 M parameters on 3x32x32 with 10 classes, 91 % of them in fc1.
    """

    def __init__(self, shape: ImageShape, num_classes: int) -> None:
        super().__init__()
        channels, height, width = shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 384)
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(384, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.relu(self.fc1(self.features(x))))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: identity, or a 1x1 conv-BN projection
    where the stride or the channel count changes (so the add always lines up)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-8 in the CIFAR layout of He et al.: a 16-channel stem, one BasicBlock per
    stage at 16/32/64 channels (strides 1/2/2), global average pool, fc (~78 k params)."""

    STAGE_CHANNELS = (16, 32, 64)

    def __init__(self, shape: ImageShape, num_classes: int) -> None:
        super().__init__()
        width = self.STAGE_CHANNELS[0]
        self.stem = nn.Sequential(
            nn.Conv2d(shape[0], width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        blocks = []
        for stage, channels in enumerate(self.STAGE_CHANNELS):
            blocks.append(BasicBlock(width, channels, stride=1 if stage == 0 else 2))
            width = channels
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.stages(self.stem(x)))))


class CharLSTM(nn.Module):
    """Next-character model: ids (N, seq_len) -> embedding -> LSTM -> logits of the last step."""

    def __init__(self, vocab_size: int, embedding: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, batch_first=True)
        self.classifier = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x))
        return self.classifier(out[:, -1])


def _image_shape(name: str, input_shape: tuple[int, ...], min_side: int = 4) -> ImageShape:
    if len(input_shape) != 3 or min(input_shape[1:]) < min_side:
        raise ValueError(
            f"model '{name}' needs image input (C, H, W) with H, W >= {min_side}; "
            f"got input shape {tuple(input_shape)}"
        )
    channels, height, width = input_shape
    return channels, height, width


def _sequence_length(name: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 1:
        raise ValueError(
            f"model '{name}' needs token-id sequences (seq_len,); got input shape {tuple(input_shape)}"
        )
    return input_shape[0]


def build_char_lstm(shape: tuple[int, ...], classes: int, cfg: ModelConfig) -> nn.Module:
    _sequence_length(cfg.name, shape)
    return CharLSTM(classes, cfg.embedding, cfg.hidden, cfg.layers)


def build_logreg(shape: tuple[int, ...], classes: int, cfg: ModelConfig) -> nn.Module:
    return LogisticRegression(math.prod(shape), classes)


def build_mlp(shape: tuple[int, ...], classes: int, cfg: ModelConfig) -> nn.Module:
    return MLP(math.prod(shape), cfg.hidden, cfg.layers, classes)


def build_twocnn(shape: tuple[int, ...], classes: int, cfg: ModelConfig) -> nn.Module:
    return TwoCNN(_image_shape(cfg.name, shape), classes)


def build_cifar_cnn(shape: tuple[int, ...], classes: int, cfg: ModelConfig) -> nn.Module:
    return CifarCNN(_image_shape(cfg.name, shape), classes)


def build_resnet(shape: tuple[int, ...], classes: int, cfg: ModelConfig) -> nn.Module:
    return ResNet(_image_shape(cfg.name, shape), classes)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model `cfg.name` (a registered name or an import path) for examples of
    `input_shape` (no batch dimension).

    For char_lstm the vocabulary is `num_classes` (next-character prediction).
    Raises ValueError naming the model and the shape when they do not fit.
    """
    input_shape = tuple(int(d) for d in input_shape)
    try:
        builder = MODELS.get(cfg.name)
    except LookupError as exc:
        raise ValueError(f"model.name: {exc}") from None
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"model '{cfg.name}': input shape {input_shape} must have positive dimensions")
    if num_classes < 2:
        raise ValueError(f"model '{cfg.name}': num_classes must be >= 2, got {num_classes}")
    model = builder(input_shape, num_classes, cfg)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name={cfg.name!r} returned {type(model).__name__}, not a torch.nn.Module; a model "
                         "plug-in is called with (input_shape, num_classes, cfg) and returns the module")
    return model
