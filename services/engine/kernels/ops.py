"""Python API of the CUDA kernels: paged attention (any query lengths), the KV cache write, the plans.

Shapes (the layout of services/engine/kv_cache.py, one layer):

    query           [num_tokens, num_heads, head_dim]        float16 / bfloat16
    key_cache       [num_blocks, block_size, kv_heads, head_dim]  the query's dtype, or int8
    key_scales      [num_blocks, kv_heads] float32           int8 caches only (kv_quant.py)
    block_tables    [num_requests, max_blocks] int32         physical block of each logical block
    seq_lens        [num_requests] int32                     positions with KV, this step's included
    query_start_loc [num_requests + 1] int32                 request r's tokens: [start[r], start[r+1])

One launch serves a step's decodes (1-token queries), prefill chunks (N tokens, causal over their
cached prefix) and verify queries (k + 1 tokens) together. The launch's work items are (request,
first row) pairs, a row being a (query token, query head) pair of one kv head, `row_tile` rows per
CTA; `plan_attention` builds them on the host from the step's host lists (no device sync) and
copies them once per step; every layer reuses the plan. A decode-only call needs none: the kernel
derives its items from the request index (`paged_decode_attention`).

Split-KV: a context is cut into `num_splits` partitions of `partition_tokens`; each partition is
one CTA per (work item, kv head), and a reduction pass merges them. Splitting pays when there are
too few CTAs to fill the GPU, i.e. small batches with long contexts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from services.engine.kernels.loader import load_kernels

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_BLOCK_SIZES = (16, 32)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
TILE_TOKENS = 16  # partitions hold whole tiles of 16 positions
GROUP_TILES = (1, 2, 4, 8)  # query rows (token, head) per CTA the kernels are compiled for
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


def plan_splits_for_ctas(num_ctas: int, max_context_len: int, num_sms: int) -> SplitPlan:
    """plan_splits for a launch of num_ctas CTAs per partition (varlen work items x kv heads)."""
    context = max(1, max_context_len)
    wanted = -(-TARGET_CTAS_PER_SM * num_sms // max(1, num_ctas))
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


def row_tile_for(max_query_len: int, group: int) -> int:
    """Rows per CTA: the smallest compiled tile covering one request's rows, at most 8."""
    rows = max(1, min(max_query_len * group, GROUP_TILES[-1]))
    return next(tile for tile in GROUP_TILES if tile >= rows)


@dataclass(frozen=True)
class AttentionPlan:
    """How one step's attention is launched; built once per step, reused by every layer."""

    row_tile: int  # query rows per CTA (1, 2, 4, 8)
    work_items: torch.Tensor | None  # int32 [num_work_items, 2] (request, first row); None: decode-only
    num_work_items: int  # CTAs per kv head and partition
    split: SplitPlan  # KV partitions


def work_items_for(query_lens: Sequence[int] | np.ndarray | torch.Tensor, group: int, row_tile: int) -> torch.Tensor:
    """int32 [num_work_items, 2] on the host: (request, first row) for each tile of each request's
    query_len * group rows, requests in order. numpy, not torch: on a few hundred host integers each
    torch call costs microseconds of dispatch, and this runs once per mixed step on the host's
    critical path."""
    lens = np.asarray(query_lens, dtype=np.int64)
    tiles = (lens * group + row_tile - 1) // row_tile
    requests = np.repeat(np.arange(len(lens), dtype=np.int32), tiles)
    firsts = np.cumsum(tiles) - tiles
    rows = (np.arange(int(tiles.sum())) - np.repeat(firsts, tiles)) * row_tile
    return torch.from_numpy(np.stack((requests, rows.astype(np.int32)), axis=1))


def plan_attention(
    query_start_loc_host: list[int],
    max_query_len: int,
    max_seq_len: int,
    num_heads: int,
    num_kv_heads: int,
    device: torch.device,
    num_sms: int | None = None,
) -> AttentionPlan:
    """The launch plan of a step from its host lists; one host-to-device copy (the work items).

    A decode-only step (every query 1 token) needs no work items: the kernel derives them."""
    group = num_heads // num_kv_heads
    row_tile = row_tile_for(max_query_len, group)
    if device.type == "cuda":
        num_sms = num_sms or _num_sms(device.index or 0)
    if max_query_len <= 1:
        num_items = (len(query_start_loc_host) - 1) * -(-group // row_tile)
        return AttentionPlan(
            row_tile, None, num_items, plan_splits_for_ctas(num_items * num_kv_heads, max_seq_len, num_sms or 1)
        )
    items = work_items_for(np.diff(query_start_loc_host), group, row_tile)
    if device.type == "cuda":
        items = items.pin_memory().to(device, non_blocking=True)
    split = plan_splits_for_ctas(len(items) * num_kv_heads, max_seq_len, num_sms or 1)
    return AttentionPlan(row_tile, items, len(items), split)


def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor | None,
    plan: AttentionPlan,
    *,
    scale: float,
    key_scales: torch.Tensor | None = None,
    value_scales: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of every request's query tokens (causal over its paged context); returns `out`.

    The plan must come from plan_attention on this step's query_start_loc and lengths (its split
    must cover the longest seq_len); a decode-only plan takes query_start_loc None. Invalid shapes,
    dtypes or devices raise ValueError.
    """
    out = torch.empty_like(query) if out is None else out
    load_kernels().paged_attention(
        out,
        query,
        key_cache,
        value_cache,
        key_scales,
        value_scales,
        block_tables,
        seq_lens,
        query_start_loc,
        plan.work_items,
        float(scale),
        plan.split.num_splits,
        plan.split.partition_tokens,
        plan.row_tile,
    )
    return out


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
    """The one-token-per-sequence case of paged_attention (implicit work items); returns `out`.

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
    row_tile = row_tile_for(1, query.shape[1] // key_cache.shape[2])
    kernels.paged_attention(
        out,
        query,
        key_cache,
        value_cache,
        key_scales,
        value_scales,
        block_tables,
        context_lens,
        None,
        None,
        float(scale),
        plan.num_splits,
        plan.partition_tokens,
        row_tile,
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
