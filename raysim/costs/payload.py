"""The encoded payloads a client downloads and uploads.

The bytes a report counts are always `len()` of one of these payloads, never a
formula, so whatever the container, header or compression costs is billed.

Wire format: a safetensors container (self-describing, no pickle).
- Floating tensors travel as float32 (float64/float16/bfloat16 are converted,
  so decoding gives float32); integer and bool tensors (BatchNorm's
  `num_batches_tracked`) travel as they are.
- A tensor without a mask is stored dense under its own name.
- A masked tensor stores under its own name only its kept values, in
  row-major order, and under `<name>::mask` its mask, as a bitmap
  (`numpy.packbits` of the flattened mask) or int32 flat indices of the kept
  entries, whichever is smaller (ties go to the bitmap). The container's
  metadata records, per masked tensor, the mask layout (`bitmap`, `indices`,
  or `absent` when the receiver already holds the mask) and the full shape.
- With compression `zstd` the whole container is one zstd frame; decode tells
  the two apart by the zstd frame magic. A bare container starts with its
  header length as a little-endian u64, which would have to be about 4 GiB to
  look like that magic; safetensors caps headers far below that.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import safetensors.numpy
import torch
import zstandard
from safetensors import SafetensorError

COMPRESSIONS = ("none", "zstd")
ZSTD_LEVELS = range(1, 23)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MASK_SUFFIX = "::mask"
_BITMAP, _INDICES, _ABSENT = "bitmap", "indices", "absent"


def encode_masked(
    tensors: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    compression: str = "none",
    level: int = 3,
    include_mask: bool = True,
) -> bytes:
    """Kept values of each masked tensor (plus its mask unless `include_mask` is
    False, for a receiver that already holds an unchanged mask); the rest dense."""
    _check_compression(compression, level)
    arrays, metadata = _wire_arrays(tensors, masks, include_mask)
    container = safetensors.numpy.save(arrays, metadata=metadata or None)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(container)
    return container


def _wire_arrays(tensors: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                 include_mask: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The container's arrays and metadata (see the module docstring)."""
    unknown = sorted(set(masks) - set(tensors))
    if unknown:
        raise ValueError(f"masks given for tensors not in the payload: {', '.join(unknown)}")
    arrays: dict[str, np.ndarray] = {}
    metadata: dict[str, str] = {}
    for name, tensor in tensors.items():
        if _MASK_SUFFIX in name:
            raise ValueError(f"tensor name {name!r} contains the reserved {_MASK_SUFFIX!r}")
        values = _to_wire(name, tensor)
        if name not in masks:
            arrays[name] = values
            continue
        flat_mask = _checked_mask(name, masks[name], values.shape).reshape(-1)
        if flat_mask.all():  # nothing pruned: plain dense is smaller than values plus a mask
            arrays[name] = values
            continue
        arrays[name] = values.reshape(-1)[flat_mask]
        layout = _ABSENT
        if include_mask:
            layout, arrays[name + _MASK_SUFFIX] = _smaller_mask_encoding(flat_mask)
        metadata[name] = f"{layout}:{','.join(map(str, values.shape))}"
    return arrays, metadata


class ReusedBufferEncoder:
    """encode_masked's uncompressed container, written into one buffer reused from call to
    call, for senders that need only its length (the receiver's values come from
    wire_values): a fresh multi-megabyte bytes object per client costs several times the copy.

    The container is the one safetensors writes, byte for byte: the first payload of each
    layout (names, dtypes, shapes, metadata) is written by safetensors itself, and its
    header and data offsets are reused for later payloads of that layout, whose tensor bytes
    are copied in at those offsets. `last()` is the most recent container."""

    LAYOUTS = 8  # layouts remembered (a round's uploads share one)

    def __init__(self) -> None:
        self._layouts: dict[tuple, tuple[bytes, dict[str, tuple[int, int]], int]] = {}
        self._buffer = bytearray()
        self._length = 0

    def length(self, tensors: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
               include_mask: bool) -> int:
        arrays, metadata = _wire_arrays(tensors, masks, include_mask)
        key = (tuple((k, a.dtype.str, a.shape) for k, a in arrays.items()), tuple(metadata.items()))
        layout = self._layouts.get(key)
        if layout is None:
            container = safetensors.numpy.save(arrays, metadata=metadata or None)
            if len(self._layouts) >= self.LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[key] = layout = _layout_of(container)
        head, offsets, total = layout
        if len(self._buffer) < total:
            self._buffer = bytearray(total)
        view = memoryview(self._buffer)
        view[: len(head)] = head
        for name, (begin, end) in offsets.items():
            view[len(head) + begin: len(head) + end] = np.ascontiguousarray(arrays[name]).reshape(-1).view(np.uint8)
        self._length = total
        return total

    def last(self) -> bytes:
        return bytes(self._buffer[: self._length])


def _layout_of(container: bytes) -> tuple[bytes, dict[str, tuple[int, int]], int]:
    """(length prefix and header, each tensor's data offsets, total length) of a safetensors container."""
    header_len = int.from_bytes(container[:8], "little")
    header = json.loads(container[8: 8 + header_len])
    offsets = {name: tuple(entry["data_offsets"]) for name, entry in header.items() if name != "__metadata__"}
    return bytes(container[: 8 + header_len]), offsets, len(container)


def decode(payload: bytes, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Inverse of the encoders: masked tensors come back full-shaped with zeros at
    pruned entries. `masks` supplies the masks a payload was sent without."""
    container = _decompress(payload)
    try:
        arrays = safetensors.numpy.load(container)
        metadata = _read_metadata(container)
    except SafetensorError as exc:
        raise ValueError(f"not a valid payload: {exc}") from None
    masks = masks or {}
    out: dict[str, torch.Tensor] = {}
    for name, values in arrays.items():
        if name.endswith(_MASK_SUFFIX):
            continue
        if name not in metadata:
            out[name] = torch.from_numpy(values)
            continue
        layout, shape = _parse_layout(name, metadata[name])
        flat_mask = _decode_mask(name, layout, shape, arrays.get(name + _MASK_SUFFIX), masks)
        if int(flat_mask.sum()) != values.size:
            raise ValueError(f"tensor {name!r}: {values.size} values for a mask keeping {int(flat_mask.sum())}")
        full = np.zeros(flat_mask.size, dtype=values.dtype)
        full[flat_mask] = values
        out[name] = torch.from_numpy(full.reshape(shape))
    return out


def wire_values(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What `decode(encode_masked(tensors, {}))` gives, without the round trip: a payload with
    no mask carries every tensor dense and losslessly (floats as float32, in name order), so
    its receiver holds exactly these values. For clients whose upload has no mask, which
    would otherwise copy each update through the container twice."""
    return {name: torch.from_numpy(_to_wire(name, tensors[name])) for name in sorted(tensors)}


def _check_compression(compression: str, level: int) -> None:
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; allowed: {', '.join(COMPRESSIONS)}")
    if compression == "zstd" and (not isinstance(level, int) or level not in ZSTD_LEVELS):
        raise ValueError(f"zstd level must be in 1..22, got {level!r}")


def _to_wire(name: str, tensor: torch.Tensor) -> np.ndarray:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"tensor {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()
    elif tensor.is_complex():
        raise ValueError(f"tensor {name!r} is complex, which has no wire format")
    return tensor.contiguous().numpy()


def _checked_mask(name: str, mask: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask for tensor {name!r} must be a bool tensor, got {got}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask for tensor {name!r} has shape {tuple(mask.shape)}, the tensor {tuple(shape)}")
    return mask.detach().cpu().contiguous().numpy()


def _smaller_mask_encoding(flat_mask: np.ndarray) -> tuple[str, np.ndarray]:
    kept = int(flat_mask.sum())
    bitmap_bytes = (flat_mask.size + 7) // 8
    # int32 indices cannot address larger tensors, so those always use the bitmap.
    if 4 * kept < bitmap_bytes and flat_mask.size <= np.iinfo(np.int32).max:
        return _INDICES, np.flatnonzero(flat_mask).astype(np.int32)
    return _BITMAP, np.packbits(flat_mask)


def _decompress(payload: bytes) -> bytes:
    if not payload.startswith(_ZSTD_MAGIC):
        return payload
    try:
        return zstandard.ZstdDecompressor().decompress(payload)
    except zstandard.ZstdError as exc:
        raise ValueError(f"corrupt zstd payload: {exc}") from None


def _read_metadata(container: bytes) -> dict[str, str]:
    # safetensors.numpy.load drops the metadata; it has already validated the
    # header (u64 length, then JSON), so reading it back here is safe.
    header_len = int.from_bytes(container[:8], "little")
    return json.loads(container[8 : 8 + header_len]).get("__metadata__") or {}


def _parse_layout(name: str, entry: str) -> tuple[str, tuple[int, ...]]:
    layout, _, dims = entry.partition(":")
    if layout not in (_BITMAP, _INDICES, _ABSENT):
        raise ValueError(f"tensor {name!r}: unknown mask layout {layout!r}")
    return layout, tuple(int(d) for d in dims.split(",") if d)


def _decode_mask(
    name: str,
    layout: str,
    shape: tuple[int, ...],
    stored: np.ndarray | None,
    masks: Mapping[str, torch.Tensor],
) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64))
    if layout == _ABSENT:
        if name not in masks:
            raise ValueError(f"payload was sent without the mask of tensor {name!r}; pass it in `masks`")
        return _checked_mask(name, masks[name], shape).reshape(-1)
    if stored is None:
        raise ValueError(f"payload lacks the {layout} of tensor {name!r}")
    if layout == _BITMAP:
        if stored.size != (size + 7) // 8:
            raise ValueError(f"tensor {name!r}: bitmap of {stored.size} bytes for {size} entries")
        return np.unpackbits(stored, count=size).astype(bool)
    if stored.size and (stored.min() < 0 or stored.max() >= size):
        raise ValueError(f"tensor {name!r}: mask index outside its {size} entries")
    flat_mask = np.zeros(size, dtype=bool)
    flat_mask[stored] = True
    return flat_mask
