"""KV cache quantization in torch: int8 per (block, kv head), int4 per group of head dims.

The CPU implementation and the correctness oracle of the CUDA quantize-on-write kernel
(kernels/csrc/cache_write.cu), and the codec the KV memory manager uses to compress swapped blocks.
Scales are float32 whatever the KV dtype; every computation below is in float32 so that the CUDA
kernel, which computes the same operations in the same order, matches it bit for bit.

int8, symmetric, one scale per (block, kv head) over its block_size x head_dim values:

    blocks [..., block_size, kv_heads, head_dim]  ->  data int8 (same shape), scales [..., kv_heads]
    scale = max|x| / 127,  q = clamp(round(x / scale), -127, 127),  x' = q * scale
    invariant: |x - x'| <= scale / 2 elementwise (round to nearest, no clipping: |x| <= 127 scale)

int4, asymmetric, one (scale, minimum) pair per group of `group_size` consecutive head dims:

    x [..., head_dim]  ->  packed uint8 [..., head_dim / 2] (even dim in the low nibble),
                           scales, minimums [..., head_dim / group_size]
    scale = (max - min) / 15,  q = clamp(round((x - min) / scale), 0, 15),  x' = q * scale + min
    invariant: |x - x'| <= scale / 2 elementwise
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT8_MAX = 127  # symmetric int8 range is [-127, 127]; -128 is never produced
INT4_LEVELS = 15  # unsigned int4 range is [0, 15]


@dataclass(frozen=True)
class Int8Blocks:
    """int8 KV blocks with their scales."""

    data: torch.Tensor  # int8 [..., block_size, kv_heads, head_dim]
    scales: torch.Tensor  # float32 [..., kv_heads]: one per (block, kv head)


@dataclass(frozen=True)
class Int4Groups:
    """int4 values, two per byte, with a scale and minimum per group of head dims."""

    packed: torch.Tensor  # uint8 [..., head_dim // 2]; dim 2i in the low nibble, 2i + 1 in the high one
    scales: torch.Tensor  # float32 [..., head_dim // group_size]
    minimums: torch.Tensor  # float32 [..., head_dim // group_size]
    group_size: int  # head dims per group


def _reciprocal_or_zero(scales: torch.Tensor) -> torch.Tensor:
    """1 / scale, and 0 where the scale is 0 (an all-zero block stores zeros)."""
    return torch.where(scales > 0, 1.0 / scales, torch.zeros_like(scales))


def _quantize_int8(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """values float32 [..., kv_heads, head_dim], scales broadcastable as [..., kv_heads, 1]."""
    return torch.clamp(torch.round(values * _reciprocal_or_zero(scales)), -INT8_MAX, INT8_MAX).to(torch.int8)


def quantize_int8_blocks(blocks: torch.Tensor) -> Int8Blocks:
    """blocks [..., block_size, kv_heads, head_dim], any float dtype; one scale per (block, head)."""
    if blocks.dim() < 3:
        raise ValueError(f"blocks must be [..., block_size, kv_heads, head_dim], got shape {tuple(blocks.shape)}")
    values = blocks.float()
    scales = values.abs().amax(dim=(-3, -1)) / INT8_MAX  # [..., kv_heads]
    return Int8Blocks(_quantize_int8(values, scales[..., None, :, None]), scales)


def dequantize_int8_blocks(quantized: Int8Blocks, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The values q * scale, [..., block_size, kv_heads, head_dim] in dtype."""
    return (quantized.data.float() * quantized.scales[..., None, :, None]).to(dtype)


def write_int8_reference(
    cache: torch.Tensor, scales: torch.Tensor, slot_mapping: torch.Tensor, values: torch.Tensor
) -> None:
    """Quantize-on-write into an int8 paged cache, in place: what the CUDA write kernel does.

    cache int8 [num_blocks, block_size, kv_heads, head_dim]; scales float32 [num_blocks, kv_heads];
    slot_mapping int64 [num_tokens] (negative = skip); values [num_tokens, kv_heads, head_dim].
    Tokens are taken in runs that share a block; a run starting at offset 0 resets the block's
    scale, otherwise the scale only grows and earlier offsets are requantized when it does.
    """
    block_size = cache.shape[1]
    slots = slot_mapping.tolist()
    token = 0
    while token < len(slots):
        if slots[token] < 0:
            token += 1
            continue
        block, first_offset = divmod(slots[token], block_size)
        end = token + 1
        while end < len(slots) and end - token < block_size and slots[end] >= 0 and slots[end] // block_size == block:
            end += 1
        _write_run(
            cache[block], scales[block], first_offset, [s % block_size for s in slots[token:end]], values[token:end]
        )
        token = end


def _write_run(
    block_data: torch.Tensor, block_scales: torch.Tensor, first_offset: int, offsets: list[int], run: torch.Tensor
) -> None:
    """One block's run: block_data [block_size, kv_heads, head_dim], block_scales [kv_heads]."""
    new_values = run.float()
    run_max = new_values.abs().amax(dim=(0, 2))  # [kv_heads]
    old = block_scales.clone() if first_offset > 0 else torch.zeros_like(block_scales)
    new = torch.maximum(old, run_max / INT8_MAX)
    if first_offset > 0:
        grown = new > old
        ratio = torch.where(grown, old / new, torch.ones_like(new))[None, :, None]
        earlier = block_data[:first_offset].float()
        requantized = torch.round(earlier * ratio).to(torch.int8)
        block_data[:first_offset] = torch.where(grown[None, :, None], requantized, block_data[:first_offset])
    block_data[offsets] = _quantize_int8(new_values, new[None, :, None])
    block_scales.copy_(new)


def write_int8(cache: torch.Tensor, scales: torch.Tensor, slot_mapping: torch.Tensor, values: torch.Tensor) -> None:
    """write_int8_reference, vectorised over the runs of one call (the engine's CPU write path).

    Same operations in the same float32 order, so the result is bit-identical; it assumes what an
    engine step guarantees, that no block receives two separate runs in one call, and falls back
    to the reference loop otherwise. A step of 64 decodes is 64 runs: one call instead of 64.
    """
    block_size = cache.shape[1]
    slots, new_values = slot_mapping, values.float()
    if slots.numel() == 0:
        return
    if bool((slots < 0).any()):  # skipped slots split runs in ways the reference loop defines
        write_int8_reference(cache, scales, slot_mapping, values)
        return
    blocks, offsets = slots // block_size, slots % block_size
    starts = torch.ones_like(blocks, dtype=torch.bool)
    starts[1:] = (blocks[1:] != blocks[:-1]) | (offsets[1:] != offsets[:-1] + 1)
    run_of_token = torch.cumsum(starts, 0) - 1
    run_blocks, run_first = blocks[starts], offsets[starts]
    if run_blocks.unique().numel() != run_blocks.numel():  # a block written by two runs: order matters
        write_int8_reference(cache, scales, slot_mapping, values)
        return
    token_max = new_values.abs().amax(dim=2)  # [tokens, kv_heads]
    index = run_of_token[:, None].expand_as(token_max)
    run_max = torch.zeros(len(run_blocks), token_max.shape[1]).scatter_reduce_(0, index, token_max, "amax")
    continuing = run_first > 0
    old = torch.where(continuing[:, None], scales[run_blocks], torch.zeros_like(run_max))
    new = torch.maximum(old, run_max / INT8_MAX)
    grown = (new > old) & continuing[:, None]
    if bool(grown.any()):
        _requantize_earlier(cache, run_blocks, run_first, old, new, grown)
    cache.view(-1, *cache.shape[2:])[slots] = _quantize_int8(new_values, new[run_of_token][:, :, None])
    scales[run_blocks] = new


def _requantize_earlier(cache, run_blocks, run_first, old, new, grown) -> None:
    """Offsets before each continuing run, rescaled where the run grew the block's scale."""
    block_size = cache.shape[1]
    ratio = torch.where(grown, old / new, torch.ones_like(new))[:, None, :, None]
    earlier = cache[run_blocks].float()  # [runs, block_size, kv_heads, head_dim]
    requantized = torch.round(earlier * ratio).to(torch.int8)
    before = torch.arange(block_size)[None, :] < run_first[:, None]  # [runs, block_size]
    change = before[:, :, None, None] & grown[:, None, :, None]
    cache[run_blocks] = torch.where(change, requantized, cache[run_blocks])


def quantize_int4_groups(values: torch.Tensor, group_size: int) -> Int4Groups:
    """values [..., head_dim], any float dtype; group_size must divide head_dim, head_dim even."""
    head_dim = values.shape[-1]
    if group_size <= 0 or head_dim % group_size or head_dim % 2:
        raise ValueError(f"group_size {group_size} must divide the even head_dim {head_dim}")
    grouped = values.float().reshape(*values.shape[:-1], head_dim // group_size, group_size)
    minimums = grouped.amin(dim=-1)
    scales = (grouped.amax(dim=-1) - minimums) / INT4_LEVELS
    shifted = (grouped - minimums[..., None]) * _reciprocal_or_zero(scales)[..., None]
    levels = torch.clamp(torch.round(shifted), 0, INT4_LEVELS).to(torch.uint8).reshape(values.shape)
    packed = levels[..., 0::2] | (levels[..., 1::2] << 4)
    return Int4Groups(packed, scales, minimums, group_size)


def dequantize_int4_groups(quantized: Int4Groups, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The values q * scale + minimum, [..., head_dim] in dtype."""
    packed = quantized.packed
    levels = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    num_groups = quantized.scales.shape[-1]
    grouped = levels.float().reshape(*levels.shape[:-1], num_groups, quantized.group_size)
    restored = grouped * quantized.scales[..., None] + quantized.minimums[..., None]
    return restored.reshape(levels.shape).to(dtype)


def relative_error(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    """||approximate - exact|| / ||exact|| (Frobenius), computed in float64."""
    exact64 = exact.double()
    return float((approximate.double() - exact64).norm() / exact64.norm().clamp_min(torch.finfo(torch.float64).tiny))
