"""Payload sizes are the bytes every report bills, so they are asserted exactly."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from raysim.costs.payload import decode, encode_masked

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def split_container(payload: bytes) -> tuple[dict, int]:
    """(safetensors JSON header, bytes of tensor data), read straight from the
    format: a little-endian u64 header length, the JSON header, then the data."""
    header_len = int.from_bytes(payload[:8], "little")
    header = json.loads(payload[8 : 8 + header_len])
    return header, len(payload) - 8 - header_len


def mask_with_kept(shape: tuple[int, ...], kept: int, seed: int = 0) -> torch.Tensor:
    numel = int(torch.Size(shape).numel())
    chosen = torch.randperm(numel, generator=torch.Generator().manual_seed(seed))[:kept]
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[chosen] = True
    return mask.reshape(shape)


def test_dense_payload_is_four_bytes_per_param_plus_header():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 7))
    state = model.state_dict()
    n_params = sum(p.numel() for p in model.parameters())

    payload = encode_masked(state, {})

    header, data_bytes = split_container(payload)
    assert data_bytes == 4 * n_params
    assert {k for k in header if k != "__metadata__"} == set(state)
    assert all(entry["dtype"] == "F32" for k, entry in header.items() if k != "__metadata__")
    decoded = decode(payload)
    assert set(decoded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(decoded[name], tensor)


def test_floats_travel_as_float32_and_integers_as_they_are():
    bn = nn.BatchNorm1d(4)
    state = {**bn.state_dict(), "half": torch.tensor([1.5, -2.25], dtype=torch.float16),
             "double": torch.tensor([[0.1, 0.2]], dtype=torch.float64)}

    decoded = decode(encode_masked(state, {}))

    assert decoded["half"].dtype == torch.float32 and torch.equal(decoded["half"], state["half"].float())
    assert decoded["double"].dtype == torch.float32 and torch.equal(decoded["double"], state["double"].float())
    assert decoded["num_batches_tracked"].dtype == torch.int64
    assert decoded["num_batches_tracked"].shape == torch.Size([])
    assert torch.equal(decoded["num_batches_tracked"], state["num_batches_tracked"])


def test_half_density_stores_half_the_values_and_a_bitmap():
    weight = torch.randn(40, 25)  # 1000 entries
    mask = mask_with_kept(weight.shape, 500)

    payload = encode_masked({"w": weight}, {"w": mask})

    _, data_bytes = split_container(payload)
    # bitmap: 1000 / 8 = 125 bytes beats indices: 4 * 500 = 2000 bytes
    assert data_bytes == 4 * 500 + 125


def test_one_percent_density_stores_indices():
    weight = torch.randn(40, 25)
    mask = mask_with_kept(weight.shape, 10)

    payload = encode_masked({"w": weight}, {"w": mask})

    _, data_bytes = split_container(payload)
    # indices: 4 * 10 = 40 bytes beats bitmap: 125 bytes
    assert data_bytes == 4 * 10 + 4 * 10


def test_masked_round_trip_is_exact_with_zeros_at_pruned_entries():
    weight = torch.randn(13, 7) + 10  # no accidental zeros; 91 entries: bitmap padding
    bias = torch.randn(7)
    for kept in (0, 1, 45, 91):
        mask = mask_with_kept(weight.shape, kept, seed=kept)
        decoded = decode(encode_masked({"w": weight, "b": bias}, {"w": mask}))
        assert torch.equal(decoded["w"], torch.where(mask, weight, torch.zeros(())))
        assert torch.count_nonzero(decoded["w"]) == kept
        assert torch.equal(decoded["b"], bias)


def test_payload_without_mask_is_smaller_by_the_mask_bytes():
    weight = torch.randn(40, 25)
    mask = mask_with_kept(weight.shape, 500)

    with_mask = encode_masked({"w": weight}, {"w": mask})
    without_mask = encode_masked({"w": weight}, {"w": mask}, include_mask=False)

    assert split_container(with_mask)[1] - split_container(without_mask)[1] == 125
    assert len(with_mask) - len(without_mask) >= 125  # the header also loses the mask's entry
    assert torch.equal(decode(without_mask, masks={"w": mask})["w"], decode(with_mask)["w"])


def test_payload_without_mask_needs_the_receivers_mask():
    weight = torch.randn(4, 4)
    mask = mask_with_kept(weight.shape, 5)
    payload = encode_masked({"layer.w": weight}, {"layer.w": mask}, include_mask=False)

    with pytest.raises(ValueError, match="layer.w"):
        decode(payload)
    with pytest.raises(ValueError, match="layer.w"):
        decode(payload, masks={"layer.w": mask.reshape(2, 8)})


def test_zstd_round_trips_and_shrinks_a_sparse_tensor():
    weight = torch.randn(100, 100)
    weight[torch.rand(100, 100) < 0.9] = 0
    mask = weight != 0

    plain = encode_masked({"w": weight}, {})
    packed = encode_masked({"w": weight}, {}, compression="zstd", level=3)

    assert packed.startswith(ZSTD_MAGIC)
    assert len(packed) < len(plain)
    assert torch.equal(decode(packed)["w"], weight)
    masked = encode_masked({"w": weight}, {"w": mask}, compression="zstd", level=19)
    assert torch.equal(decode(masked)["w"], weight)


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"fc.weight": torch.ones(3, 2, dtype=torch.bool)}, "fc.weight"),
        ({"fc.weight": torch.ones(2, 3)}, "fc.weight.*bool"),
        ({"missing": torch.ones(2, 3, dtype=torch.bool)}, "missing"),
    ],
)
def test_invalid_masks_name_the_tensor(masks, match):
    with pytest.raises(ValueError, match=match):
        encode_masked({"fc.weight": torch.randn(2, 3)}, masks)


def test_unknown_compression_names_the_option():
    with pytest.raises(ValueError, match="lz4.*none, zstd"):
        encode_masked({"w": torch.randn(3)}, {}, compression="lz4")
    with pytest.raises(ValueError, match="level"):
        encode_masked({"w": torch.randn(3)}, {}, compression="zstd", level=0)


def test_garbage_payload_is_a_value_error():
    with pytest.raises(ValueError):
        decode(b"not a payload at all")
    with pytest.raises(ValueError):
        decode(ZSTD_MAGIC + b"truncated")


def test_an_all_kept_mask_costs_nothing_over_dense():
    tensors = {"w": torch.randn(64, 32), "b": torch.randn(32)}
    full = {"w": torch.ones(64, 32, dtype=torch.bool)}
    assert len(encode_masked(tensors, full)) == len(encode_masked(tensors, {}))
    decoded = decode(encode_masked(tensors, full, include_mask=False), full)
    assert torch.equal(decoded["w"], tensors["w"])


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_wire_values_are_what_an_unmasked_payload_decodes_to(compression):
    """Clients without a mask aggregate wire_values(delta) instead of decoding their payload:
    the values, dtypes and names must be exactly the decoded ones."""
    from raysim.costs.payload import wire_values

    g = torch.Generator().manual_seed(3)
    tensors = {"z.weight": torch.randn(5, 4, generator=g), "a.bias": torch.randn(4, generator=g, dtype=torch.float64),
               "m.half": torch.randn(3, generator=g).to(torch.bfloat16), "count": torch.tensor([7])}
    decoded = decode(encode_masked(tensors, {}, compression))
    fast = wire_values(tensors)
    assert set(fast) == set(decoded)
    for name in tensors:
        assert fast[name].dtype == decoded[name].dtype and torch.equal(fast[name], decoded[name]), name


def test_the_reused_buffer_encoder_writes_the_container_safetensors_writes():
    """Byte for byte, on a first payload of its layout (written by safetensors) and on later
    ones (header reused, values copied in), masked and unmasked, with and without the mask."""
    from raysim.costs.payload import ReusedBufferEncoder

    g = torch.Generator().manual_seed(5)
    encoder = ReusedBufferEncoder()
    masks = {"w": torch.rand(6, 5, generator=g) > 0.5}
    for step in range(3):
        tensors = {"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g, dtype=torch.float64),
                   "n": torch.tensor([step])}
        for m, include in (({}, False), (masks, False), (masks, True)):
            want = encode_masked(tensors, m, include_mask=include)
            assert encoder.length(tensors, m, include) == len(want)
            assert encoder.last() == want, (step, bool(m), include)
    smaller = {"w": torch.randn(2, 5, generator=g)}  # a new layout after a bigger one: no stale bytes
    assert encoder.length(smaller, {}, False) == len(encode_masked(smaller, {}))
    assert encoder.last() == encode_masked(smaller, {})
