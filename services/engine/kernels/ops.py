"""Python API of the CUDA kernels: paged decode attention, the KV cache write, the split-KV plan.

Shapes (the layout of services/engine/kv_cache.py, one layer):

    query        [num_seqs, num_heads, head_dim]          float16 / bfloat16, one token per sequence
    key_cache    [num_blocks, block_size, kv_heads, head_dim]  the query's dtype, or int8
    key_scales   [num_blocks, kv_heads] float32           int8 caches only (kv_quant.py)
    block_tables [num_seqs, max_blocks] int32             physical block of each logical block
    context_lens [num_seqs] int32                         positions with KV, the new one included

Split-KV: a sequence's context is cut into `num_splits` partitions of `partition_tokens`; each
partition is one CTA per kv head, and a reduction pass merges them. Splitting pays when there are
too few (sequence, kv head) CTAs to fill the GPU, i.e. small batches with long contexts.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from services.engine.kernels.loader import load_kernels

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_BLOCK_SIZES = (16, 32)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
TILE_TOKENS = 16  # partitions hold whole tiles of 16 positions
GROUP_TILES = (1, 2, 4, 8)  # query heads per CTA the kernels are compiled for
MIN_PARTITION_TOKENS = 256  # shorter partitions leave the 4 warps of a CTA too little work
PARTITION_ALIGN_TOKENS = 64  # partitions are whole multiples of 4 warps x 16 positions
TARGET_CTAS_PER_SM = 8  # split until about this many CTAs per SM (2-4 resident: 2+ waves)


@dataclass(frozen=True)
class SplitPlan:
    """How the kernel cuts each context into partitions."""

    num_splits: int  # partitions per sequence (1 = no reduction pass)
    partition_tokens: int  # positions per partition, a multiple of TILE_TOKENS


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def ctas_per_sequence(num_heads: int, num_kv_heads: int) -> int:
    """CTAs one sequence partition takes: one per kv head and group tile of up to 8 query heads."""
    group = num_heads // num_kv_heads
    group_tile = next(tile for tile in GROUP_TILES if tile >= min(group, GROUP_TILES[-1]))
    return num_kv_heads * -(-group // group_tile)


def plan_splits(num_seqs: int, num_heads: int, num_kv_heads: int, max_context_len: int, num_sms: int) -> SplitPlan:
    """Splits a context only when (sequence, kv head) CTAs alone would not fill the GPU."""
    context = max(1, max_context_len)
    ctas = max(1, num_seqs * ctas_per_sequence(num_heads, num_kv_heads))
    wanted = -(-TARGET_CTAS_PER_SM * num_sms // ctas)
    num_splits = max(1, min(wanted, -(-context // MIN_PARTITION_TOKENS)))
    if num_splits == 1:
        return SplitPlan(1, _round_up(context, TILE_TOKENS))
    return fixed_splits(context, num_splits, PARTITION_ALIGN_TOKENS)


def fixed_splits(max_context_len: int, num_splits: int, align_tokens: int = TILE_TOKENS) -> SplitPlan:
    """About num_splits partitions of aligned length covering max_context_len (tests, benchmarks)."""
    context = max(1, max_context_len)
    partition = _round_up(-(-context // max(1, num_splits)), align_tokens)
    return SplitPlan(-(-context // partition), partition)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def paged_decode_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    *,
    scale: float,
    max_context_len: int,
    key_scales: torch.Tensor | None = None,
    value_scales: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    split_plan: SplitPlan | None = None,
) -> torch.Tensor:
    """Attention of each sequence's one query token over its paged context; returns `out`.

    max_context_len must be >= every context_len (positions past the plan's coverage would be
    ignored); the engine knows it on the host, so no device sync is needed. A context_len of 0
    gives zeros. Invalid shapes, dtypes or devices raise ValueError.
    """
    kernels = load_kernels()
    if out is None:
        out = torch.empty_like(query)
    plan = split_plan or plan_splits(
        query.shape[0], query.shape[1], key_cache.shape[2], max_context_len, _num_sms(query.device.index or 0)
    )
    if plan.num_splits * plan.partition_tokens < max_context_len:
        raise ValueError(f"split plan {plan} does not cover max_context_len {max_context_len}")
    kernels.paged_decode(
        out, query, key_cache, value_cache, key_scales, value_scales, block_tables, context_lens,
        float(scale), plan.num_splits, plan.partition_tokens,
    )
    return out


def write_kv_to_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    key_scales: torch.Tensor | None = None,
    value_scales: torch.Tensor | None = None,
) -> None:
    """Stores key/value [num_tokens, kv_heads, head_dim] at their int64 slots (negative = skip).

    With an int8 cache (and its float32 scales) the values are quantized on write, growing each
    block's per-head scale as positions arrive (kv_quant.write_int8_reference is the reference).
    """
    load_kernels().write_cache(key, value, key_cache, value_cache, key_scales, value_scales, slot_mapping)
