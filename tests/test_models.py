import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysim.config import ModelConfig
from raysim.models import build_model

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
SEQ = (20,)

# (model, input shape, classes): every model on every input it is meant for.
INTENDED = [
    ("logreg", (60,), 10),
    ("logreg", MNIST, 10),
    ("mlp", (60,), 10),
    ("mlp", MNIST, 10),
    ("twocnn", MNIST, 10),
    ("twocnn", CIFAR, 100),
    ("cifar_cnn", CIFAR, 10),
    ("cifar_cnn", MNIST, 62),
    ("resnet", CIFAR, 10),
    ("resnet", MNIST, 10),
    ("char_lstm", SEQ, 30),
]


def make(name: str, shape: tuple[int, ...], classes: int, **cfg) -> nn.Module:
    return build_model(ModelConfig(name=name, **cfg), shape, classes)


def batch(name: str, shape: tuple[int, ...], classes: int, n: int = 4) -> torch.Tensor:
    if name == "char_lstm":
        return torch.randint(0, classes, (n, *shape))
    return torch.randn(n, *shape)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,shape,classes", INTENDED)
def test_model_gives_logits_and_trains_one_step(name, shape, classes):
    torch.manual_seed(0)
    model = make(name, shape, classes)
    x, y = batch(name, shape, classes), torch.randint(0, classes, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    logits = model(x)
    assert logits.shape == (4, classes)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_twocnn_matches_the_paper_on_mnist():
    model = make("twocnn", MNIST, 10)
    conv1 = 1 * 32 * 25 + 32
    conv2 = 32 * 64 * 25 + 64
    fc1 = 64 * 7 * 7 * 512 + 512
    fc2 = 512 * 10 + 10
    assert n_params(model) == conv1 + conv2 + fc1 + fc2 == 1_663_370
    assert model.fc1.in_features == 3136
    assert 0.96 < fc1 / n_params(model) < 0.97


def test_cifar_cnn_has_about_1_6_million_parameters():
    assert n_params(make("cifar_cnn", CIFAR, 10)) == pytest.approx(1.6e6, rel=0.1)


def test_resnet_is_small_residual_and_batch_normalised():
    model = make("resnet", CIFAR, 10)
    assert n_params(model) < 300_000
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 2  # one per stage where the channel count changes
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)


def test_mlp_and_char_lstm_follow_the_config():
    mlp = make("mlp", (60,), 10, hidden=32, layers=3)
    hidden = [m for m in mlp.features if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in hidden] == [(60, 32), (32, 32), (32, 32)]

    lstm_model = make("char_lstm", SEQ, 30, hidden=24, layers=2, embedding=6)
    assert lstm_model.embedding.num_embeddings == 30 and lstm_model.embedding.embedding_dim == 6
    assert (lstm_model.lstm.input_size, lstm_model.lstm.hidden_size, lstm_model.lstm.num_layers) == (6, 24, 2)
    assert lstm_model.lstm.batch_first
    assert lstm_model.classifier.out_features == 30


@pytest.mark.parametrize("name,shape,classes", INTENDED)
def test_same_seed_builds_identical_weights(name, shape, classes):
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return make(name, shape, classes).state_dict()

    first, again, other = state(3), state(3), state(4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


@pytest.mark.parametrize(
    "name,shape",
    [
        ("twocnn", (60,)),
        ("cifar_cnn", (784,)),
        ("resnet", (28, 28)),
        ("twocnn", (1, 2, 2)),
        ("char_lstm", MNIST),
        ("char_lstm", (60, 8)),
    ],
)
def test_model_input_mismatch_is_a_clear_error(name, shape):
    with pytest.raises(ValueError, match=re.escape(f"'{name}'") + ".*" + re.escape(str(shape))):
        make(name, shape, 10)


def test_bad_classes_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        make("logreg", (60,), 1)
