import json
import math

import pytest
import torch
from torch import nn

from autoflip.structured import prune_units, replay, select_removals, slice_state, unit_scores
from raysim.config import ModelConfig
from raysim.costs.flops import training_flop_profile
from raysim.models import build_model

# name -> (config, input shape, classes)
MODELS = {
    "twocnn": (ModelConfig(name="twocnn"), (1, 28, 28), 10),
    "cifar_cnn": (ModelConfig(name="cifar_cnn"), (3, 32, 32), 10),
    "resnet": (ModelConfig(name="resnet"), (3, 32, 32), 10),
    "mlp": (ModelConfig(name="mlp", hidden=64, layers=2), (1, 28, 28), 10),
    "char_lstm": (ModelConfig(name="char_lstm"), (80,), 81),
}

# ResNet-8: the BatchNorms that follow each unit layer's convs (residual partners included).
RESNET_NORMS = {
    "stem.0": ["stem.1", "stages.0.bn2"],
    "stages.0.conv1": ["stages.0.bn1"],
    "stages.1.conv1": ["stages.1.bn1"],
    "stages.1.conv2": ["stages.1.bn2", "stages.1.shortcut.1"],
    "stages.2.conv1": ["stages.2.bn1"],
    "stages.2.conv2": ["stages.2.bn2", "stages.2.shortcut.1"],
}


def build(name: str, seed: int = 0) -> nn.Module:
    cfg, shape, classes = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(cfg, shape, classes)
    # Non-trivial BatchNorm affine and statistics, so eval-mode outputs depend on them.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    return model


def batch(name: str, n: int = 3, seed: int = 1) -> torch.Tensor:
    _, shape, classes = MODELS[name]
    generator = torch.Generator().manual_seed(seed)
    if name == "char_lstm":
        return torch.randint(0, classes, (n, *shape), generator=generator)
    return torch.randn(n, *shape, generator=generator)


def random_guidance(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(p.shape, generator=generator) for name, p in model.named_parameters()}


def prune_randomly(model: nn.Module, name: str, fraction: float, seed: int):
    x = batch(name)
    removals = select_removals(unit_scores(model, random_guidance(model, seed), x), fraction)
    return removals, prune_units(model, removals, x)


def cloned_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


@torch.no_grad()
def zero_removed_units(model: nn.Module, name: str, removals: dict[str, list[int]]) -> None:
    """Make the dense model compute what the pruned one does: removed units contribute 0."""
    modules = dict(model.named_modules())
    for key, units in removals.items():
        if name == "char_lstm":
            # Zeroing gate rows is not removal (sigmoid(0) = 0.5): silence the unit's readers instead.
            lstm, layer = model.lstm, int(key.rsplit(".l", 1)[1])
            getattr(lstm, f"weight_hh_l{layer}")[:, units] = 0
            last = layer + 1 == lstm.num_layers
            reader = model.classifier.weight if last else getattr(lstm, f"weight_ih_l{layer + 1}")
            reader[:, units] = 0
        elif name == "resnet":
            for norm in RESNET_NORMS[key]:
                modules[norm].weight[units] = 0
                modules[norm].bias[units] = 0
        else:
            modules[key].weight[units] = 0
            modules[key].bias[units] = 0


@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_model_computes_what_its_masked_dense_twin_does(name):
    model = build(name)
    twin = build(name, seed=99)
    twin.load_state_dict(model.state_dict())
    x = batch(name, seed=5)
    dense_logits = model.eval()(x)

    removals, change = prune_randomly(model, name, fraction=0.3, seed=2)
    zero_removed_units(twin, name, removals)

    assert change.record and all(entry["remove"] for entry in change.record)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in twin.parameters())
    with torch.no_grad():
        pruned_logits, twin_logits = model.eval()(x), twin.eval()(x)
    torch.testing.assert_close(pruned_logits, twin_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pruned_logits, dense_logits, atol=1e-3)  # the removals mattered


@pytest.mark.parametrize("name", list(MODELS))
def test_replay_of_json_records_rebuilds_the_architecture_over_rounds(name):
    model = build(name)
    _, first = prune_randomly(model, name, fraction=0.3, seed=2)
    _, second = prune_randomly(model, name, fraction=0.25, seed=3)
    record = json.loads(json.dumps(first.record + second.record))

    fresh = replay(build(name, seed=7), record, batch(name))

    shapes = {key: tuple(p.shape) for key, p in model.named_parameters()}
    assert {key: tuple(p.shape) for key, p in fresh.named_parameters()} == shapes
    fresh.load_state_dict(model.state_dict())
    x = batch(name, seed=11)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))


@pytest.mark.parametrize("name", list(MODELS))
def test_slice_state_follows_the_model_over_rounds(name):
    model = build(name)
    dense = cloned_state(model)
    guidance = random_guidance(model, seed=4)
    _, first = prune_randomly(model, name, fraction=0.3, seed=2)
    after_first = cloned_state(model)
    _, second = prune_randomly(model, name, fraction=0.25, seed=3)

    assert slice_state(dense, first.keep).keys() == dense.keys()
    for state, expected in (
        (slice_state(dense, first.keep), after_first),
        (slice_state(slice_state(dense, first.keep), second.keep), model.state_dict()),
    ):
        for key, value in expected.items():
            assert torch.equal(state[key], value), key
    sliced_guidance = slice_state(slice_state(guidance, first.keep), second.keep)
    assert {k: v.shape for k, v in sliced_guidance.items()} == {k: p.shape for k, p in model.named_parameters()}
    assert set(first.keep) == {key for key, value in dense.items() if value.shape != after_first[key].shape}


def test_slice_state_passes_unknown_names_unchanged():
    extra = torch.randn(3)
    keep = {"w": {0: torch.tensor([0, 2])}}
    sliced = slice_state({"w": torch.arange(6).reshape(3, 2), "extra": extra}, keep)
    assert sliced["extra"] is extra
    assert torch.equal(sliced["w"], torch.tensor([[0, 1], [4, 5]]))


def test_twocnn_flops_drop_by_the_removed_share_of_conv1_filters():
    model = build("twocnn")
    x = batch("twocnn")
    before = training_flop_profile(model, x)
    removed = 8  # of conv1's 32 filters: conv1 loses 8/32 of its outputs, conv2 of its inputs
    prune_units(model, {"conv1": [0, 3, 9, 10, 17, 20, 28, 31]}, x)
    after = training_flop_profile(model, x)

    share = removed / 32
    for layer in ("conv1", "conv2"):
        assert after.per_layer[layer] == pytest.approx(before.per_layer[layer] * (1 - share), rel=1e-12)
    for layer in ("fc1", "classifier"):
        assert after.per_layer[layer] == before.per_layer[layer]
    dropped = (before.per_layer["conv1"] + before.per_layer["conv2"]) * share
    assert after.total == pytest.approx(before.total - dropped, rel=1e-12)


def test_mlp_flops_drop_by_the_removed_share_of_hidden_units():
    model = build("mlp")
    x = batch("mlp")
    before = training_flop_profile(model, x)
    prune_units(model, {"features.1": list(range(0, 64, 4))}, x)  # 16 of 64 units
    after = training_flop_profile(model, x)

    for layer in ("features.1", "features.3"):
        assert after.per_layer[layer] == pytest.approx(before.per_layer[layer] * 0.75, rel=1e-12)
    assert after.per_layer["classifier"] == before.per_layer["classifier"]
    dropped = (before.per_layer["features.1"] + before.per_layer["features.3"]) * 0.25
    assert after.total == pytest.approx(before.total - dropped, rel=1e-12)


def test_scores_are_fan_in_means_pooled_over_residual_partners():
    model = build("resnet")
    guidance = random_guidance(model, seed=4)
    scores = unit_scores(model, guidance, batch("resnet"))

    # Residual partners share the root's key; the output layer never gets one.
    assert list(scores) == list(RESNET_NORMS)
    stem, partner = guidance["stem.0.weight"], guidance["stages.0.conv2.weight"]
    pooled = (stem.sum(dim=(1, 2, 3)) + partner.sum(dim=(1, 2, 3))) / (stem[0].numel() + partner[0].numel())
    torch.testing.assert_close(scores["stem.0"], pooled)
    torch.testing.assert_close(scores["stages.0.conv1"], guidance["stages.0.conv1.weight"].mean(dim=(1, 2, 3)))


def test_lstm_scores_average_the_four_gate_rows_of_both_weights():
    model = build("char_lstm")
    guidance = random_guidance(model, seed=4)
    scores = unit_scores(model, guidance, batch("char_lstm"))

    assert list(scores) == ["lstm.l0", "lstm.l1"]
    hidden, unit = model.lstm.hidden_size, 17
    rows = [unit + gate * hidden for gate in range(4)]
    fan_in = torch.cat([guidance["lstm.weight_ih_l1"][rows].flatten(), guidance["lstm.weight_hh_l1"][rows].flatten()])
    torch.testing.assert_close(scores["lstm.l1"][unit], fan_in.mean())


def test_lstm_layers_lose_equal_counts_and_keep_one_hidden_size():
    model = build("char_lstm")
    x = batch("char_lstm")
    removals = select_removals(unit_scores(model, random_guidance(model, seed=4), x), 0.3)
    assert len(removals["lstm.l0"]) == len(removals["lstm.l1"]) == 60
    assert removals["lstm.l0"] != removals["lstm.l1"]  # units are chosen per layer
    prune_units(model, removals, x)
    assert model.lstm.hidden_size == 140
    assert model.classifier.in_features == 140

    with pytest.raises(ValueError, match="same number of units"):
        prune_units(model, {"lstm.l0": [0, 1], "lstm.l1": [0]}, x)
    assert model.lstm.hidden_size == 140  # refused before touching the model


def test_output_layer_and_residual_partners_cannot_be_requested():
    model = build("resnet")
    x = batch("resnet")
    shapes = {key: p.shape for key, p in model.named_parameters()}
    with pytest.raises(ValueError, match="unknown unit layer 'classifier'"):
        prune_units(model, {"classifier": [0]}, x)
    with pytest.raises(ValueError, match="request removals on 'stem.0'"):
        prune_units(model, {"stages.0.conv2": [0]}, x)
    assert {key: p.shape for key, p in model.named_parameters()} == shapes


@pytest.mark.parametrize(
    "removals, message",
    [
        ({"conv1": [32]}, r"must lie in \[0, 32\)"),
        ({"conv1": [-1]}, r"must lie in \[0, 32\)"),
        ({"conv1": [1, 1]}, "repeat"),
        ({"conv1": list(range(32))}, "all 32 units"),
        ({"conv1": [True]}, "integers"),
        ({"conv1": 3}, "list of unit indices"),
    ],
)
def test_invalid_removals_are_refused(removals, message):
    model = build("twocnn")
    with pytest.raises(ValueError, match=message):
        prune_units(model, removals, batch("twocnn"))
    assert model.conv1.out_channels == 32


def test_pruning_keeps_train_flags_and_batchnorm_statistics():
    model = build("resnet").train()
    stats = model.stages[1].bn1.running_mean.clone()
    batches_seen = model.stem[1].num_batches_tracked.clone()
    change = prune_units(model, {"stages.0.conv1": [1]}, batch("resnet"))
    assert all(module.training for module in model.modules())
    assert torch.equal(model.stages[1].bn1.running_mean, stats)
    assert torch.equal(model.stem[1].num_batches_tracked, batches_seen)
    assert change.record == [{"layer": "stages.0.conv1", "remove": [1]}]


def test_replay_refuses_malformed_records():
    with pytest.raises(ValueError, match="record entries"):
        replay(build("mlp"), [{"layer": "features.1"}], batch("mlp"))
    with pytest.raises(ValueError, match="unknown unit layer 'fc9'"):
        replay(build("mlp"), [{"layer": "fc9", "remove": [0]}], batch("mlp"))


def test_select_removals_counts_ties_and_min_keep():
    scores = {"a": torch.tensor([0.5, 0.1, 0.5, 0.1, 0.9]), "b": torch.rand(100), "c": torch.rand(3)}
    removals = select_removals(scores, 0.29, min_keep=2)
    assert removals["a"] == [1]  # floor(0.29 * 5) = 1: of the tied 0.1s, the lower index
    assert len(removals["b"]) == 29  # 0.29 * 100 is 28.999... in float64
    assert removals["c"] == []

    ties = select_removals(scores, 0.6)["a"]  # 3 of 5: both 0.1s, then the lower-index 0.5
    assert ties == [0, 1, 3]
    assert select_removals(scores, 0.99, min_keep=2)["c"] == [int(scores["c"].argmin())]
    assert select_removals(scores, 0.0) == {"a": [], "b": [], "c": []}


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, math.nan])
def test_select_removals_rejects_fractions_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match="fraction"):
        select_removals({"a": torch.rand(4)}, fraction)


def test_select_removals_rejects_bad_min_keep_and_scores():
    with pytest.raises(ValueError, match="min_keep"):
        select_removals({"a": torch.rand(4)}, 0.5, min_keep=0)
    with pytest.raises(ValueError, match="finite"):
        select_removals({"a": torch.tensor([0.1, math.nan])}, 0.5)


class ConcatBranches(nn.Module):
    """Two convs concatenated into one consumer: both removals slice the same dim of merge.weight."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(1, 4, 3, padding=1)
        self.right = nn.Conv2d(1, 4, 3, padding=1)
        self.merge = nn.Conv2d(8, 6, 3, padding=1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(6 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        return self.classifier(self.flatten(torch.relu(self.merge(branches))))


def test_keep_composes_when_one_call_slices_a_dim_twice():
    torch.manual_seed(0)
    model = ConcatBranches()
    x = torch.randn(2, 1, 8, 8)
    dense = cloned_state(model)
    change = prune_units(model, {"left": [1], "right": [0, 3]}, x)

    assert model.merge.in_channels == 5
    assert change.keep["merge.weight"][1].tolist() == [0, 2, 3, 5, 6]
    for key, value in model.state_dict().items():
        assert torch.equal(slice_state(dense, change.keep)[key], value), key


class SkipIntoOutput(nn.Module):
    """A hidden Linear added to the classifier's logits: its units are the output's."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = nn.Linear(4, 3)
        self.classifier = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x) + self.skip(x)


def test_layers_coupled_to_the_output_layer_are_refused():
    model = SkipIntoOutput()
    with pytest.raises(ValueError, match="output layer 'classifier'"):
        unit_scores(model, random_guidance(model, seed=0), torch.randn(2, 4))
