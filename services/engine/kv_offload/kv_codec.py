"""A request's KV blocks as one byte string, at full precision or quantized, and back.

When the scheduler preempts a request whose KV the memory service keeps, the engine encodes the
request's blocks (all layers, keys and values) into one contiguous uint8 CPU tensor, which travels to
the host tier as is; on resume it decodes the bytes into the request's new blocks. The encoding
depends only on the cache geometry (KvCacheShape without num_blocks), the cache dtype, the number of
blocks, the codec and the int4 group size, so its size is known before encoding
(`encoded_size_bytes`) and the memory service can reserve a slot up front.

Whole blocks are encoded, the unused tail positions of a request's last block included: the size
stays a function of the block count, and the tail is never read (attention stops at context_len).

Byte layout, n = len(block_ids), L layers, B = block_size, H kv heads, D head_dim, G = int4 group
size; every array is C-contiguous with the leading axis 2 = (keys, values). Float32 sections come
first, so that each one starts at a multiple of 4 bytes:

    FULL  | kv   cache dtype [2, L, n, B, H, D]                 |  raw bytes, bit-exact
    INT8  | scales  f32 [2, L, n, H] | data int8 [2, L, n, B, H, D] |  x' = q * scale
    INT4  | scales  f32 [2, L, n, B, H, D/G] | minimums f32 (same) | packed u8 [2, L, n, B, H, D/2] |
          x' = q * scale + minimum, dim 2i in the low nibble (see kv_quant.py)

Invariant: decode(encode(blocks)) == blocks bit for bit for FULL; for INT8 |x - x'| <= scale / 2 and
for INT4 |x - x'| <= scale / 2 of its group, plus the rounding to the cache dtype.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from services.engine import kv_quant
from services.engine.kv_cache import KvCacheShape, PagedKvCache

# Group size of int4: 32 head dims per (scale, minimum) pair. Smaller groups track the value range
# more closely (lower error) but each group costs 8 bytes of float32 scale + minimum: 32 dims hold
# 16 bytes of nibbles + 8 bytes of metadata (6 bits per value, 0.19x of float32, 0.375x of
# bfloat16), 64 dims 5 bits. KIVI-style group-wise KV quantization uses 32; the codec benchmark
# (alise bench kv-codec) reports the error of 16, 32 and 64 on the default model's KV.
DEFAULT_INT4_GROUP_SIZE = 32
SCALE_DTYPE = torch.float32  # scales and minimums of the lossy codecs, whatever the cache dtype
SECTION_ALIGN_BYTES = 4  # float32 sections must start at a multiple of this (Tensor.view rule)


class KvCodec(enum.Enum):
    """How a swapped request's KV is stored in the host tier."""

    FULL = "full"  # the cache dtype, bit-exact
    INT8 = "int8"  # symmetric int8, one scale per (layer, block, K/V, kv head)
    INT4 = "int4"  # asymmetric int4, one scale and minimum per group of head dims


def default_int4_group_size(head_dim: int) -> int:
    """DEFAULT_INT4_GROUP_SIZE, or head_dim when smaller, or the largest divisor of head_dim below it."""
    if head_dim <= DEFAULT_INT4_GROUP_SIZE:
        return head_dim
    return math.gcd(DEFAULT_INT4_GROUP_SIZE, head_dim)


@dataclass(frozen=True)
class _Section:
    """One array of an encoding."""

    dtype: torch.dtype  # element type
    shape: tuple[int, ...]  # elements per axis

    @property
    def num_bytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _resolve_group_size(shape: KvCacheShape, int4_group_size: int | None) -> int:
    group_size = default_int4_group_size(shape.head_dim) if int4_group_size is None else int4_group_size
    if group_size <= 0 or shape.head_dim % group_size or shape.head_dim % 2:
        raise ValueError(f"int4 group size {group_size} must divide the even head_dim {shape.head_dim}")
    return group_size


def _layout(shape: KvCacheShape, dtype: torch.dtype, num_blocks: int, codec: KvCodec, group_size: int) -> list[_Section]:
    """The sections of an encoding, in byte order (see the module docstring)."""
    if num_blocks < 0:
        raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
    kv = (2, shape.num_layers, num_blocks, shape.block_size, shape.num_kv_heads, shape.head_dim)
    if codec is KvCodec.FULL:
        return [_Section(dtype, kv)]
    if codec is KvCodec.INT8:
        return [_Section(SCALE_DTYPE, (*kv[:3], shape.num_kv_heads)), _Section(torch.int8, kv)]
    if codec is KvCodec.INT4:
        groups = _Section(SCALE_DTYPE, (*kv[:-1], shape.head_dim // group_size))
        return [groups, groups, _Section(torch.uint8, (*kv[:-1], shape.head_dim // 2))]
    raise ValueError(f"unknown KV codec {codec!r}")


def encoded_size_bytes(
    shape: KvCacheShape, dtype: torch.dtype, num_blocks: int, codec: KvCodec, int4_group_size: int | None = None
) -> int:
    """Exact bytes of the encoding of num_blocks blocks (all layers, K and V)."""
    group_size = _resolve_group_size(shape, int4_group_size)
    return sum(section.num_bytes for section in _layout(shape, dtype, num_blocks, codec, group_size))


def _views(buffer: torch.Tensor, sections: list[_Section]) -> list[torch.Tensor]:
    """Typed, shaped views of a uint8 buffer laid out as `sections` (no copy)."""
    views, offset = [], 0
    for section in sections:
        raw = buffer[offset : offset + section.num_bytes]
        views.append(raw.view(section.dtype).view(section.shape))
        offset += section.num_bytes
    return views


def _block_index(cache: PagedKvCache, block_ids: list[int]) -> torch.Tensor:
    """block_ids as an int64 tensor on the cache's device; ValueError for bad or repeated ids."""
    num_blocks = cache.shape.num_blocks
    if any(not 0 <= block_id < num_blocks for block_id in block_ids):
        raise ValueError(f"block ids must be in [0, {num_blocks}), got {block_ids}")
    if len(set(block_ids)) != len(block_ids):
        raise ValueError(f"block ids must be distinct, got {block_ids}")
    return torch.tensor(block_ids, dtype=torch.long, device=cache.key_cache.device)


def _gather(cache: PagedKvCache, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The blocks' keys and values as [2, L, n, B, H, D] in the cache dtype (into `out` if given)."""
    if out is None:
        size = (2, cache.shape.num_layers, len(index), *cache.key_cache.shape[2:])
        out = torch.empty(size, dtype=cache.key_cache.dtype, device=cache.key_cache.device)
    torch.index_select(cache.key_cache, 1, index, out=out[0])
    torch.index_select(cache.value_cache, 1, index, out=out[1])
    return out


def _quantize_into(views: list[torch.Tensor], kv: torch.Tensor, codec: KvCodec, group_size: int) -> None:
    """Writes the lossy encoding of kv [2, L, n, B, H, D] into its section views."""
    if codec is KvCodec.INT8:
        quantized = kv_quant.quantize_int8_blocks(kv)
        views[0].copy_(quantized.scales)
        views[1].copy_(quantized.data)
    else:
        groups = kv_quant.quantize_int4_groups(kv, group_size)
        views[0].copy_(groups.scales)
        views[1].copy_(groups.minimums)
        views[2].copy_(groups.packed)


def _decoded(views: list[torch.Tensor], codec: KvCodec, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """kv [2, L, n, B, H, D] in dtype from the section views of an encoding."""
    if codec is KvCodec.FULL:
        return views[0]
    if codec is KvCodec.INT8:
        return kv_quant.dequantize_int8_blocks(kv_quant.Int8Blocks(views[1], views[0]), dtype)
    return kv_quant.dequantize_int4_groups(kv_quant.Int4Groups(views[2], views[0], views[1], group_size), dtype)


def encode_blocks(
    cache: PagedKvCache, block_ids: list[int], codec: KvCodec, int4_group_size: int | None = None
) -> torch.Tensor:
    """The blocks' KV as one contiguous 1-D uint8 CPU tensor of encoded_size_bytes(...) bytes.

    Quantization runs on the cache's device, so only the compressed bytes cross to the host.
    """
    index = _block_index(cache, block_ids)
    group_size = _resolve_group_size(cache.shape, int4_group_size)
    sections = _layout(cache.shape, cache.key_cache.dtype, len(block_ids), codec, group_size)
    buffer = torch.empty(sum(s.num_bytes for s in sections), dtype=torch.uint8, device=cache.key_cache.device)
    views = _views(buffer, sections)
    if codec is KvCodec.FULL:
        _gather(cache, index, out=views[0])  # straight into the output: one copy
    else:
        _quantize_into(views, _gather(cache, index), codec, group_size)
    return buffer.cpu()


def decode_blocks(
    data: torch.Tensor, cache: PagedKvCache, block_ids: list[int], codec: KvCodec, int4_group_size: int | None = None
) -> None:
    """Writes the KV encoded in data (from encode_blocks) into those blocks of the cache.

    data: 1-D uint8 on any device; it moves to the cache's device compressed and is dequantized there.
    Other blocks are not touched. ValueError when data's dtype, rank or size does not match.
    """
    index = _block_index(cache, block_ids)
    group_size = _resolve_group_size(cache.shape, int4_group_size)
    dtype = cache.key_cache.dtype
    sections = _layout(cache.shape, dtype, len(block_ids), codec, group_size)
    expected_bytes = sum(s.num_bytes for s in sections)
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != expected_bytes:
        raise ValueError(
            f"{codec.value} encoding of {len(block_ids)} blocks must be 1-D uint8 of {expected_bytes} bytes, "
            f"got {data.dtype} of shape {tuple(data.shape)}"
        )
    if data.storage_offset() % SECTION_ALIGN_BYTES or not data.is_contiguous():
        data = data.clone(memory_format=torch.contiguous_format)  # a float view needs an aligned start
    kv = _decoded(_views(data.to(cache.key_cache.device), sections), codec, group_size, dtype)
    cache.key_cache.index_copy_(1, index, kv[0])
    cache.value_cache.index_copy_(1, index, kv[1])


def measure_codec_errors(
    cache: PagedKvCache, block_ids: list[int], int4_group_size: int | None = None
) -> dict[KvCodec, float]:
    """Relative Frobenius error ||x' - x|| / ||x|| of each codec's round trip over those blocks' K and V.

    The round trip ends in the cache dtype, as a real swap does; the cache is not modified. FULL is
    0.0 by construction (bit-exact), listed so that a caller can look up any codec.
    """
    index = _block_index(cache, block_ids)
    group_size = _resolve_group_size(cache.shape, int4_group_size)
    dtype = cache.key_cache.dtype
    kv = _gather(cache, index)
    errors = {KvCodec.FULL: 0.0}
    for codec in (KvCodec.INT8, KvCodec.INT4):
        sections = _layout(cache.shape, dtype, len(block_ids), codec, group_size)
        buffer = torch.empty(sum(s.num_bytes for s in sections), dtype=torch.uint8, device=kv.device)
        views = _views(buffer, sections)
        _quantize_into(views, kv, codec, group_size)
        errors[codec] = kv_quant.relative_error(_decoded(views, codec, group_size, dtype), kv)
    return errors
