from pathlib import Path

import pytest

from raysim.config import DEFAULT_CONFIG, ConfigError, config_from_dict, load_config


def test_embedded_default_loads():
    cfg = load_config()
    assert cfg.data.dataset == "synthetic" and DEFAULT_CONFIG.is_file()


def test_unknown_field_names_field_and_allowed_fields():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"clients": {"batchsize": 3}})
    msg = str(err.value)
    assert "clients.batchsize" in msg and "batch_size" in msg and "local_epochs" in msg


def test_ill_typed_field_names_field():
    with pytest.raises(ConfigError, match=r"rounds"):
        config_from_dict({"rounds": "many"})


def test_bad_choice_lists_allowed_values():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"clients": {"optimizer": {"name": "rmsprop"}}})
    assert "clients.optimizer.name" in str(err.value) and "'sgd'" in str(err.value) and "'adam'" in str(err.value)


def test_overrides_apply_with_yaml_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rounds: 3\n")
    cfg = load_config(path, ["clients.optimizer.lr=0.5", "devices.deadline_s=null", "eval.clients=false"])
    assert cfg.rounds == 3 and cfg.clients.optimizer.lr == 0.5 and cfg.eval.clients is False


@pytest.mark.parametrize("item", ["rounds", "=3"])
def test_malformed_override(item):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, [item])


def test_override_into_scalar_is_refused():
    with pytest.raises(ConfigError, match="'rounds' is not a section"):
        load_config(None, ["rounds.x=1"])


def test_cross_field_rules_fail_before_work():
    with pytest.raises(ConfigError, match="natural"):
        config_from_dict({"data": {"dataset": "fashion_mnist", "partition": {"scheme": "natural"}}})
    with pytest.raises(ConfigError, match="char_lstm"):
        config_from_dict({"model": {"name": "char_lstm"}})
    with pytest.raises(ConfigError, match="per_round"):
        config_from_dict({"clients": {"per_round": 2.5}})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_is_valid(path):
    assert load_config(path).name


def test_the_autoflip_example_has_a_fedavg_twin_that_differs_only_in_the_method():
    path = next(p for p in EXAMPLES if p.name == "fmnist_autoflip.yaml")
    autoflip, twin = load_config(path), load_config(path, ["algorithm.name=fedavg"])
    assert (autoflip.algorithm.name, twin.algorithm.name) == ("autoflip", "fedavg")
    a, b = autoflip.model_dump(), twin.model_dump()
    a["algorithm"].pop("name"), b["algorithm"].pop("name")
    assert a == b and autoflip.data.dataset == "fashion_mnist" and autoflip.data.max_train_samples is None
