import pytest
import torch
import torch_pruning as tp
from torch import nn

from raysim.config import ModelConfig
from raysim.costs.flops import (
    FlopProfile,
    architecture_signature,
    lstm_flops,
    training_flop_profile,
)
from raysim.models import build_model

# Conventions under test: a multiply-add is 2 FLOPs; backward = weight gradient
# (same count as the forward matmul) + input gradient (same again) except where
# the layer's input needs no gradient (the first layer, fed with data).


def test_linear_layers_match_the_analytic_count():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(4, 6)

    first, second = 2 * 6 * 5, 2 * 5 * 3
    train = training_flop_profile(model, x)
    assert train.per_layer == {"0": first + first, "2": second + second + second}
    assert train.other == 0


def test_conv_layers_match_the_analytic_count():
    # 6x6 input: conv1 keeps 6x6 (padding 1), conv2 shrinks it to 4x4 (no padding).
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.Linear(5 * 16, 2)
    )
    x = torch.randn(3, 2, 6, 6)

    conv1 = 2 * 2 * 3 * 3 * 4 * 6 * 6  # 2 * Cin * k * k * Cout * Hout * Wout
    conv2 = 2 * 4 * 3 * 3 * 5 * 4 * 4
    fc = 2 * 80 * 2
    train = training_flop_profile(model, x)
    assert train.per_layer == {"0": 2 * conv1, "2": 3 * conv2, "4": 3 * fc}
    assert train.total == 2 * conv1 + 3 * conv2 + 3 * fc


def test_residual_branches_are_charged_to_their_own_layers():
    # FlopCounterMode's own module tracker charges the main branch's backward to the
    # shortcut conv as well; the per-layer numbers must not.
    model = build_model(ModelConfig(name="resnet"), (3, 32, 32), 10)
    profile = training_flop_profile(model, torch.randn(2, 3, 32, 32))

    shortcut = 2 * 16 * 32 * 16 * 16  # 1x1 conv 16 -> 32, stride 2: 16x16 output
    assert profile.per_layer["stages.1.shortcut.0"] == 3 * shortcut
    stem = 2 * 3 * 9 * 16 * 32 * 32
    assert profile.per_layer["stem.0"] == 2 * stem
    assert profile.per_layer["stem.1"] == 0  # BatchNorm: elementwise, not counted
    assert profile.other == 0


def test_unattributed_matmuls_are_other():
    class FixedProjection(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.register_buffer("projection", torch.randn(3, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) @ self.projection

    model, x = FixedProjection(), torch.randn(2, 4)
    projection = 2 * 3 * 2
    assert training_flop_profile(model, x).other == 2 * projection  # forward + input gradient


def test_lstm_fed_with_data_matches_the_formula():
    class LastStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 4, batch_first=True)
            self.classifier = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.lstm(x)[0][:, -1])

    model, x = LastStep(), torch.randn(2, 5, 3)
    forward = 2 * (16 * 3 + 16 * 4) * 5  # (W_ih + W_hh) per step, 5 steps
    # Backward: both weight gradients, but the input gradient only through W_hh.
    train = forward + forward + 2 * 16 * 4 * 5
    assert training_flop_profile(model, x).per_layer["lstm"] == train == 2880
    assert lstm_flops(model.lstm, 5, backward=True, input_grad=False) == train


def test_char_lstm_matches_the_formula_and_ignores_the_dispatch_path():
    cfg = ModelConfig(name="char_lstm", hidden=8, layers=2, embedding=6)
    model = build_model(cfg, (20,), 30)
    x = torch.randint(0, 30, (2, 20))

    weights = 32 * 6 + 32 * 8 + 32 * 8 + 32 * 8
    # The embedding output needs a gradient, so every matmul runs three times.
    lstm = 3 * 2 * weights * 20
    classifier = 3 * 2 * 8 * 30
    profile = training_flop_profile(model, x)
    assert profile.per_layer == {"embedding": 0, "lstm": lstm, "classifier": classifier}
    assert profile.per_layer["lstm"] == lstm_flops(model.lstm, 20, backward=True, input_grad=True) > 0
    assert profile.other == 0

    # float64 LSTMs skip oneDNN and decompose into counted mm ops; the result must not move.
    double = training_flop_profile(model.double(), x)
    assert double is not profile
    assert double.per_layer["lstm"] == lstm


def test_profile_is_per_example():
    model = nn.Sequential(nn.Linear(6, 5))
    assert training_flop_profile(model, torch.randn(1, 6)).total == 2 * 2 * 6 * 5
    assert training_flop_profile(model, torch.randn(7, 6)).total == 2 * 2 * 6 * 5


def test_same_architecture_hits_the_cache():
    torch.manual_seed(0)
    first = build_model(ModelConfig(name="twocnn"), (1, 28, 28), 10)
    torch.manual_seed(1)
    second = build_model(ModelConfig(name="twocnn"), (1, 28, 28), 10)

    profile = training_flop_profile(first, torch.randn(2, 1, 28, 28))
    assert training_flop_profile(second, torch.randn(5, 1, 28, 28)) is profile


def test_input_shape_is_part_of_the_cache_key():
    # Global average pooling lets the same ResNet run on both sizes.
    model = build_model(ModelConfig(name="resnet"), (1, 28, 28), 10)
    small = training_flop_profile(model, torch.randn(2, 1, 28, 28))
    large = training_flop_profile(model, torch.randn(2, 1, 32, 32))
    assert large.total > small.total


def test_structured_pruning_changes_the_profile():
    model = build_model(ModelConfig(name="twocnn"), (1, 28, 28), 10)
    x = torch.randn(2, 1, 28, 28)
    dense = training_flop_profile(model, x)
    dense_signature = architecture_signature(model)

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=list(range(16))).prune()
    assert model.conv1.out_channels == 16 and model.conv2.in_channels == 16

    pruned = training_flop_profile(model, x)
    assert architecture_signature(model) != dense_signature
    assert pruned is not dense
    assert pruned.per_layer["conv1"] == dense.per_layer["conv1"] / 2
    assert pruned.per_layer["conv2"] == dense.per_layer["conv2"] / 2
    assert pruned.per_layer["fc1"] == dense.per_layer["fc1"]
    assert pruned.total < dense.total


def test_profiling_leaves_the_model_untouched():
    model = build_model(ModelConfig(name="resnet"), (3, 32, 32), 10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()

    training_flop_profile(model, torch.randn(2, 3, 32, 32))

    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_effective_scales_each_layer_by_its_density():
    profile = FlopProfile(per_layer={"conv1": 100.0, "fc1": 40.0, "classifier": 6.0}, other=4.0)
    assert profile.total == 150.0
    assert profile.effective({}) == profile.total
    assert profile.effective({"conv1": 0.5}) == profile.total - 50.0
    assert profile.effective({"conv1": 0.0, "fc1": 0.25}) == 6.0 + 10.0 + 4.0


def test_effective_on_a_measured_profile():
    model = build_model(ModelConfig(name="twocnn"), (1, 28, 28), 10)
    profile = training_flop_profile(model, torch.randn(2, 1, 28, 28))
    assert profile.effective({"conv2": 0.5}) == profile.total - profile.per_layer["conv2"] / 2


def test_effective_refuses_unknown_layers_and_bad_densities():
    profile = FlopProfile(per_layer={"conv1": 100.0}, other=0.0)
    with pytest.raises(ValueError, match="unknown layers.*conv_1"):
        profile.effective({"conv_1": 0.5})
    with pytest.raises(ValueError, match="conv1.*\\[0, 1\\]"):
        profile.effective({"conv1": 1.5})


def test_example_without_batch_dimension_is_refused():
    with pytest.raises(ValueError, match="at least one example"):
        training_flop_profile(nn.Sequential(nn.Linear(3, 2)), torch.randn(0, 3))
