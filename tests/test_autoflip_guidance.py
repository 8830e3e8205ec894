import pytest
import torch

from autoflip import guidance
from autoflip.guidance import guidance_from_sum, normalise, update_running
from autoflip.layers import prunable_weight_names
from autoflip.masks import unstructured_mask
from raysim.engine.stats import WeightedSum
from raysim.models.zoo import CharLSTM, ResNet, TwoCNN


def test_minmax_spans_zero_to_one():
    x = torch.tensor([[3.0, -1.0], [7.0, 5.0]])
    out = normalise({"w": x}, "minmax")["w"]
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, torch.tensor([[0.5, 0.0], [1.0, 0.75]]))


def test_robust_centres_on_the_median_and_scales_by_the_iqr():
    out = normalise({"w": torch.arange(5.0)}, "robust")["w"]  # median 2, q25 1, q75 3
    assert torch.allclose(out, torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))


@pytest.mark.parametrize("method", ["minmax", "robust"])
@pytest.mark.parametrize(
    "x",
    [torch.full((4, 3), 2.5), torch.tensor([7.0]), torch.zeros(2, 2), torch.tensor([0.0, 0, 0, 0, 0, 0, 9.0])],
    ids=["constant", "single", "zeros", "robust-iqr-zero"],
)
def test_tensors_without_spread_map_to_zeros(method, x):
    out = normalise({"w": x}, method)["w"]
    if method == "minmax" and x.max() > x.min():
        assert out.max() == 1.0 and out.min() == 0.0
    else:
        assert torch.equal(out, torch.zeros_like(x))


def test_each_tensor_is_normalised_on_its_own():
    out = normalise({"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([10.0, 30.0])}, "minmax")
    assert torch.equal(out["a"], out["b"])


def test_non_finite_input_is_an_error_naming_the_tensor():
    with pytest.raises(ValueError, match="'fc1.weight'"):
        normalise({"fc1.weight": torch.tensor([1.0, float("nan")])}, "minmax")
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise({"w": torch.ones(2)}, "zscore")


# 1001 entries put every quartile on an element; 1000 puts them between two (249.75,
# 499.5, 749.25), so the kthvalue path must interpolate as torch.quantile does.
@pytest.mark.parametrize("n", [1000, 1001])
def test_large_tensor_quantiles_match_torch_quantile(monkeypatch, n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(0)) ** 2
    q25, q50, q75 = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75]))
    monkeypatch.setattr(guidance, "TORCH_QUANTILE_LIMIT", 10)
    out = normalise({"w": x}, "robust")["w"]
    assert torch.allclose(out, (x - q50) / (q75 - q25), atol=1e-6)
    qs = (0.0, 0.1, 0.25, 0.5, 0.75, 0.999, 1.0)
    want = torch.quantile(x.double(), torch.tensor(qs, dtype=torch.float64)).tolist()
    assert guidance._quantiles(x, qs) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("method", ["minmax", "robust"])
def test_tensors_above_2_pow_24_elements(method):
    n = 2**24 + 3
    out = normalise({"w": torch.arange(n, dtype=torch.float32)}, method)["w"]
    assert bool(torch.isfinite(out).all())
    low, high = (0.0, 1.0) if method == "minmax" else (-1.0, 1.0)
    assert out[0].item() == pytest.approx(low, abs=1e-6) and out[-1].item() == pytest.approx(high, abs=1e-6)


def _client_sums(n_clients=6):
    g = torch.Generator().manual_seed(1)
    sums = []
    for k in range(n_clients):
        deviation = {"conv.weight": torch.randn(8, 3, 3, 3, generator=g) ** 2, "fc.weight": torch.randn(20, 30, generator=g) ** 2}
        sums.append(WeightedSum.of(deviation, float(10 * (k + 1))))
    return sums


def test_guidance_does_not_depend_on_how_partial_sums_are_grouped():
    s = _client_sums()
    left_fold = s[0] + s[1] + s[2] + s[3] + s[4] + s[5]
    reversed_fold = s[5] + s[4] + s[3] + s[2] + s[1] + s[0]
    tree = ((s[0] + s[3]) + (s[5] + s[1])) + (s[2] + s[4])
    weights = torch.tensor([10.0 * (k + 1) for k in range(6)], dtype=torch.float64)
    for method in ("minmax", "robust"):
        results = [guidance_from_sum(stat, method) for stat in (left_fold, reversed_fold, tree)]
        expected = normalise(
            {name: (sum(x.total[name] for x in s) / weights.sum()).float() for name in s[0].total}, method
        )
        masks = [unstructured_mask(g, 0.6, "global") for g in results]
        for g, m in zip(results, masks):
            for name in expected:
                assert torch.allclose(g[name], expected[name], rtol=1e-6, atol=1e-7)
                assert torch.equal(m[name], masks[0][name])


def test_running_update_arithmetic():
    fresh = {"w": torch.tensor([1.0, 0.0]), "v": torch.ones(2, 2)}
    first = update_running(None, fresh, 0.9)
    assert torch.equal(first["w"], fresh["w"]) and first["w"] is not fresh["w"]
    second = update_running(first, {"w": torch.tensor([0.0, 1.0]), "v": torch.zeros(2, 2)}, 0.75)
    assert torch.allclose(second["w"], torch.tensor([0.75, 0.25]))
    assert torch.allclose(second["v"], torch.full((2, 2), 0.75))
    assert torch.equal(update_running(first, second, 1.0)["w"], first["w"])
    assert torch.equal(update_running(first, second, 0.0)["w"], second["w"])


def test_running_update_rejects_mismatches():
    with pytest.raises(ValueError, match="'fc1.weight'"):
        update_running({"fc1.weight": torch.ones(4, 3)}, {"fc1.weight": torch.ones(3, 3)}, 0.5)
    with pytest.raises(ValueError, match="covers"):
        update_running({"a": torch.ones(1)}, {"b": torch.ones(1)}, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        update_running(None, {"a": torch.ones(1)}, 1.5)


def test_prunable_weight_names_follow_the_mask_convention():
    assert prunable_weight_names(TwoCNN((1, 28, 28), 10)) == ["conv1.weight", "conv2.weight", "fc1.weight"]
    lstm = CharLSTM(vocab_size=30, embedding=8, hidden=16, layers=2)
    assert prunable_weight_names(lstm) == [
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1",
    ]
    resnet = ResNet((3, 32, 32), 10)
    names = prunable_weight_names(resnet)
    state = resnet.state_dict()
    assert all(name in state and name.endswith("weight") for name in names)
    assert "stages.1.shortcut.0.weight" in names
    assert not any("bn" in name or "classifier" in name or "shortcut.1" in name for name in names)
