"""The pruning layer's policy: which layers of a model AutoFLIP and its baselines may prune."""
import pytest
from test_models import CIFAR, INTENDED, MNIST, SEQ, make
from torch import nn

from autoflip.layers import output_layer_name, prunable_layer_names
from conftest import algorithm_parts
from raysim.config import ConfigError


@pytest.mark.parametrize("name,shape,classes", INTENDED)
def test_output_layer_is_the_classifier_and_never_prunable(name, shape, classes):
    model = make(name, shape, classes)
    output = output_layer_name(model)
    assert output == "classifier"
    assert model.get_submodule(output).out_features == classes

    prunable = prunable_layer_names(model)
    assert output not in prunable
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], (nn.Conv2d, nn.Linear, nn.LSTM)) for n in prunable)
    expected = {
        n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.LSTM)) and n != output
    }
    assert set(prunable) == expected


def test_prunable_layers_of_twocnn_and_char_lstm():
    assert prunable_layer_names(make("twocnn", MNIST, 10)) == ["conv1", "conv2", "fc1"]
    # The embedding is not a pruning target.
    assert prunable_layer_names(make("char_lstm", SEQ, 30)) == ["lstm"]
    resnet = prunable_layer_names(make("resnet", CIFAR, 10))
    assert "stages.1.shortcut.0" in resnet and not any("bn" in n for n in resnet)


def test_output_layer_of_a_model_without_linear_is_an_error():
    with pytest.raises(ValueError, match="no nn.Linear"):
        output_layer_name(nn.Sequential(nn.Conv2d(1, 2, 3)))


@pytest.mark.parametrize("algorithm", ["autoflip", "prunefl", "feddst", "hybrid_magnitude"])
def test_pruning_a_model_without_hidden_layers_is_a_config_error(small_config, algorithm):
    """logreg's only layer is the output layer, which is never pruned: refused before any
    round with one message naming both settings, instead of a division by zero mid-run."""
    with pytest.raises(ConfigError, match=f"algorithm.name='{algorithm}'.*model.name='logreg' has none"):
        algorithm_parts(small_config(model={"name": "logreg"}, algorithm={"name": algorithm}))
