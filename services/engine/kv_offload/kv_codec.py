"""A request's KV blocks as one byte string, at full precision or quantized, and back.

When the scheduler preempts a request whose KV the memory service keeps, the engine encodes the
request's blocks (all layers, keys and values) into one contiguous uint8 CPU tensor, which travels to
the host tier as is; on resume it decodes the bytes into the request's new blocks. The encoding
depends only on the cache geometry (KvCacheShape without num_blocks), the cache dtype, the number of
blocks, the codec and the int4 group size, so its size is known before encoding
(`encoded_size_bytes`) and the memory service can reserve a slot up front.

Whole blocks are encoded, the unused tail positions of a request's last block included: the size
stays a function of the block count, and the tail is never read (attention stops at context_len).
Its stale values (zeros, or an earlier request's KV) do enter the last block's int8 scales and int4
group ranges, like any KV of the same magnitude would.

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
from typing import Iterator

import torch

from services.engine import kv_quant
from services.engine.kv_cache import KvCacheShape, PagedKvCache

# Group size of int4: 32 head dims per (scale, minimum) pair. Smaller groups track the value range
# more closely but each costs 8 bytes of float32 scale + minimum. Bits per value and relative error
# on the default model's KV (alise bench kv-codec): 16 dims 8 bits, 6.5% (as big as int8, 9x its
# error: pointless); 32 dims 6 bits (0.375x of bfloat16), 7.8%; 64 dims 5 bits, 8.9%. 32 is also
# what KIVI-style group-wise KV quantization uses.
DEFAULT_INT4_GROUP_SIZE = 32
SCALE_DTYPE = torch.float32  # scales and minimums of the lossy codecs, whatever the cache dtype
SECTION_ALIGN_BYTES = 4  # float32 sections must start at a multiple of this (Tensor.view rule)
CHUNK_VALUES = 1 << 17  # values per chunk on CPU: 512 KiB of float32 temporaries (see _row_chunks)


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
    shape: tuple[int, ...]  # elements per axis: (rows, then a row's axes)

    @property
    def num_bytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _resolve_group_size(shape: KvCacheShape, int4_group_size: int | None) -> int:
    group_size = default_int4_group_size(shape.head_dim) if int4_group_size is None else int4_group_size
    if group_size <= 0 or shape.head_dim % group_size or shape.head_dim % 2:
        raise ValueError(f"int4 group size {group_size} must divide the even head_dim {shape.head_dim}")
    return group_size


def _row_layout(
    shape: KvCacheShape, dtype: torch.dtype, num_rows: int, codec: KvCodec, group_size: int
) -> list[_Section]:
    """The sections of an encoding of num_rows rows (one row = one block of one layer's K or V)."""
    block = (shape.block_size, shape.num_kv_heads, shape.head_dim)
    if codec is KvCodec.FULL:
        return [_Section(dtype, (num_rows, *block))]
    if codec is KvCodec.INT8:
        return [_Section(SCALE_DTYPE, (num_rows, shape.num_kv_heads)), _Section(torch.int8, (num_rows, *block))]
    if codec is KvCodec.INT4:
        groups = _Section(SCALE_DTYPE, (num_rows, *block[:-1], shape.head_dim // group_size))
        return [groups, groups, _Section(torch.uint8, (num_rows, *block[:-1], shape.head_dim // 2))]
    raise ValueError(f"unknown KV codec {codec!r}")


def _layout(
    shape: KvCacheShape, dtype: torch.dtype, num_blocks: int, codec: KvCodec, group_size: int
) -> list[_Section]:
    """The sections of the encoding of num_blocks blocks, in byte order (see the module docstring):
    the leading axes [2, L, n] are flattened into 2 * L * n rows."""
    if num_blocks < 0:
        raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
    return _row_layout(shape, dtype, 2 * shape.num_layers * num_blocks, codec, group_size)


def encoded_size_bytes(
    shape: KvCacheShape, dtype: torch.dtype, num_blocks: int, codec: KvCodec, int4_group_size: int | None = None
) -> int:
    """Exact bytes of the encoding of num_blocks blocks (all layers, K and V)."""
    group_size = _resolve_group_size(shape, int4_group_size)
    return sum(section.num_bytes for section in _layout(shape, dtype, num_blocks, codec, group_size))


def _views(buffer: torch.Tensor, sections: list[_Section]) -> list[torch.Tensor]:
    """Typed views [num_rows, ...] of a uint8 buffer laid out as `sections` (no copy)."""
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


def _row_chunks(
    cache: PagedKvCache, index: torch.Tensor, whole: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor, slice]]:
    """(cache tensor viewed as rows [L * N, B, H, D], its rows to read or write, the matching rows of
    the encoding), keys first, then values; the cache row of (layer, block) is layer * N + block:

        encoding rows:  K l0 b0 .. K l0 b(n-1) | K l1 b0 .. | ... | V l0 b0 .. | ... V l(L-1) b(n-1)
        cache rows:       0*N+ids[0] ..          1*N+ids[0]         0*N+ids[0]

    On CPU the rows come in chunks of about CHUNK_VALUES values (unless whole): the quantizers'
    temporaries then stay in cache and reuse freed memory instead of faulting in fresh pages
    (2.5-4x faster than one call over a swap's 32 MiB); on a GPU one chunk per tensor is best.
    """
    layer_offsets = torch.arange(cache.shape.num_layers, device=index.device)[:, None] * cache.shape.num_blocks
    rows = (layer_offsets + index[None, :]).reshape(-1)
    values_per_row = cache.shape.block_size * cache.shape.num_kv_heads * cache.shape.head_dim
    on_gpu = cache.key_cache.device.type != "cpu"
    step = max(1, len(rows) if whole or on_gpu else CHUNK_VALUES // values_per_row)
    for half, tensor in enumerate((cache.key_cache, cache.value_cache)):
        flat = tensor.view(-1, *tensor.shape[2:])
        for start in range(0, len(rows), step):
            stop = min(start + step, len(rows))
            yield flat, rows[start:stop], slice(half * len(rows) + start, half * len(rows) + stop)


def _quantize_into(views: list[torch.Tensor], source: torch.Tensor, codec: KvCodec, group_size: int) -> None:
    """Writes the INT8 or INT4 encoding of source rows [r, B, H, D] into the section views (r rows)."""
    if codec is KvCodec.INT8:
        quantized = kv_quant.quantize_int8_blocks(source)
        views[0].copy_(quantized.scales)
        views[1].copy_(quantized.data)
    else:
        groups = kv_quant.quantize_int4_groups(source, group_size)
        views[0].copy_(groups.scales)
        views[1].copy_(groups.minimums)
        views[2].copy_(groups.packed)


def _decoded(views: list[torch.Tensor], codec: KvCodec, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows [r, B, H, D] in dtype from the section views (sliced to r rows) of an encoding."""
    if codec is KvCodec.FULL:
        return views[0]
    if codec is KvCodec.INT8:
        return kv_quant.dequantize_int8_blocks(kv_quant.Int8Blocks(views[1], views[0]), dtype)
    return kv_quant.dequantize_int4_groups(kv_quant.Int4Groups(views[2], views[0], views[1], group_size), dtype)


def _check_buffer(data: torch.Tensor, codec: KvCodec, num_blocks: int, expected_bytes: int) -> None:
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != expected_bytes:
        raise ValueError(
            f"{codec.value} encoding of {num_blocks} blocks must be 1-D uint8 of {expected_bytes} bytes, "
            f"got {data.dtype} of shape {tuple(data.shape)}"
        )


def encode_blocks(
    cache: PagedKvCache,
    block_ids: list[int],
    codec: KvCodec,
    int4_group_size: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The blocks' KV as one contiguous 1-D uint8 CPU tensor of encoded_size_bytes(...) bytes.

    out: where to write it (a contiguous CPU slice such as a host-tier slot, starting at a multiple
    of 4 bytes); default a new tensor. Quantization runs on the cache's device, so only the
    compressed bytes cross to the host.
    """
    index = _block_index(cache, block_ids)
    group_size = _resolve_group_size(cache.shape, int4_group_size)
    sections = _layout(cache.shape, cache.key_cache.dtype, len(block_ids), codec, group_size)
    size = sum(s.num_bytes for s in sections)
    if out is not None:
        _check_buffer(out, codec, len(block_ids), size)
        if out.device.type != "cpu" or not out.is_contiguous() or out.storage_offset() % SECTION_ALIGN_BYTES:
            raise ValueError("out must be a contiguous CPU tensor starting at a multiple of 4 bytes")
    device = cache.key_cache.device
    buffer = out if out is not None and device.type == "cpu" else torch.empty(size, dtype=torch.uint8, device=device)
    views = _views(buffer, sections)
    for flat, rows, target in _row_chunks(cache, index, whole=codec is KvCodec.FULL):
        if codec is KvCodec.FULL:
            torch.index_select(flat, 0, rows, out=views[0][target])  # straight into the encoding
        else:
            _quantize_into([view[target] for view in views], flat.index_select(0, rows), codec, group_size)
    if out is not None:
        return out if buffer is out else out.copy_(buffer)
    return buffer.cpu()


def decode_blocks(
    data: torch.Tensor, cache: PagedKvCache, block_ids: list[int], codec: KvCodec, int4_group_size: int | None = None
) -> None:
    """Writes the KV encoded in data (from encode_blocks) into those blocks of the cache.

    data: 1-D uint8 on any device, at any offset; it moves to the cache's device compressed and is
    dequantized there. Other blocks are not touched. ValueError when its dtype, rank or size is wrong.
    """
    index = _block_index(cache, block_ids)
    group_size = _resolve_group_size(cache.shape, int4_group_size)
    dtype = cache.key_cache.dtype
    sections = _layout(cache.shape, dtype, len(block_ids), codec, group_size)
    _check_buffer(data, codec, len(block_ids), sum(s.num_bytes for s in sections))
    if data.storage_offset() % SECTION_ALIGN_BYTES or not data.is_contiguous():
        data = data.clone(memory_format=torch.contiguous_format)  # a float view needs an aligned start
    views = _views(data.to(cache.key_cache.device), sections)
    for flat, rows, source in _row_chunks(cache, index, whole=codec is KvCodec.FULL):
        flat.index_copy_(0, rows, _decoded([view[source] for view in views], codec, group_size, dtype))


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
    errors = {KvCodec.FULL: 0.0}
    for codec in (KvCodec.INT8, KvCodec.INT4):
        squared_error = squared_norm = 0.0
        for flat, rows, _ in _row_chunks(cache, index, whole=False):
            exact = flat.index_select(0, rows)
            sections = _row_layout(cache.shape, dtype, len(rows), codec, group_size)
            buffer = torch.empty(sum(s.num_bytes for s in sections), dtype=torch.uint8, device=exact.device)
            views = _views(buffer, sections)
            _quantize_into(views, exact, codec, group_size)
            difference = _decoded(views, codec, group_size, dtype).float() - exact.float()
            squared_error += float(torch.linalg.vector_norm(difference, dtype=torch.float64)) ** 2
            squared_norm += float(torch.linalg.vector_norm(exact, dtype=torch.float64)) ** 2
        errors[codec] = math.sqrt(squared_error / max(squared_norm, torch.finfo(torch.float64).tiny))
    return errors
