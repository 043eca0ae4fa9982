"""Batched attention for short queries on the torch reference path: verifies and short prefill chunks.

A verify is a (k+1)-token query at the end of its request's context; a short prefill chunk is the same
shape. One SDPA per such request (attention.attend_request) upcasts its whole gathered K/V to fp32 and
builds a causal mask, per request and per layer: on SmolLM2 (bf16, 1 thread) ~10 ms CPU per verifying
request and step at batch 12-16, most of what a verify costs. Here they are attended like the decode
batch: rows sorted by context length, gathered MAX_ROWS_PER_GATHER at a time over their paged KV padded
to the group's longest context, queries padded to the group's longest query, one grouped_attention
(bf16 matmuls, fp32 softmax, no K/V copy per query head) per group.

Row b of a group, with n_b queries over context c_b (padding past n_b repeats its last query):

    query index q:    0           1         ...   n_b - 1     n_b ... max_queries - 1 (padding)
    its position:     c_b - n_b   c_b-n_b+1 ...   c_b - 1     c_b - 1 (clamped; output dropped)
    keeps key p iff   p <= its position   (so never p >= c_b: the gathered padding past the context)

The plan (row indices, positions) is built once per step (prepare) and read by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from services.engine.attention import AttentionMetadata

MAX_SHORT_QUERY_TOKENS = 32  # queries up to this many tokens (and >= 2) are batched; longer chunks: one SDPA each
MAX_ROWS_PER_GATHER = 8  # requests gathered together; rows are grouped by context length


def is_reduced_precision_on_cpu(query: torch.Tensor) -> bool:
    """CPU SDPA has no fast bf16 kernel. Measured (GQA 9/3, head dim 64, 1 thread): 64 decodes x 800
    keys: SDPA bf16 ~20x slower than grouped_attention, fp32 SDPA 10x slower; a 512-token chunk over
    1,000 keys: fp32 SDPA (after upcasting) 17 ms, grouped_attention 42 ms. So decodes and short queries
    take grouped_attention and long prefill chunks fp32 SDPA. In fp32 SDPA is used throughout (the oracle)."""
    return query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16)


def grouped_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention with KV heads shared by groups of query heads, without copying K/V per query head.

    query [B, heads, Q, d]; keys, values [B, kv_heads, L, d] (contiguous: a strided K made the bf16 matmul
    3-7x slower on CPU, see gather_kv); keep broadcastable to [B, 1, Q, L] (True = attend; every query keeps
    at least one key). Query head h reads KV head h // (heads / kv_heads), as repeat_interleave would.

        query [B, kv_heads, group * Q, d] @ keys^T [B, kv_heads, d, L] -> scores [B, kv_heads, group * Q, L]

    Scores and softmax run in fp32; the mask is added as 0 / -inf in place over the (group, query) rows
    (masked_fill of a repeated mask took ~10x longer). Returns [B, heads, Q, d] in the query's dtype.
    """
    batch, num_heads, num_queries, head_dim = query.shape
    num_kv_heads, length = keys.shape[1], keys.shape[2]
    group = num_heads // num_kv_heads
    grouped = query.reshape(batch, num_kv_heads, group * num_queries, head_dim)
    scores = torch.matmul(grouped, keys.transpose(-1, -2)).float().mul_(scale)
    bias = torch.zeros(keep.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~keep, float("-inf"))
    bias = bias.expand(batch, 1, num_queries, length).unsqueeze(2)  # [B, 1, 1, Q, L]
    scores.view(batch, num_kv_heads, group, num_queries, length).add_(bias)  # rows ordered (group, query)
    weights = torch.softmax(scores, dim=-1).to(values.dtype)
    attended = torch.matmul(weights, values)  # [B, kv_heads, group * Q, d]
    return attended.reshape(batch, num_heads, num_queries, head_dim)


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """[B, kv_heads, num_blocks * block_size, d], contiguous, from the pool's blocks block_tables [B, num_blocks].

    index_select of the flat block list: advanced indexing (cache[block_tables]) took ~9x longer for 8 rows x
    800 tokens (bf16, 1 thread). An int8 pool's view (kv_cache.DequantizedView) dequantizes what it gathers."""
    num_rows, num_blocks = block_tables.shape
    flat = block_tables.reshape(-1)
    blocks = cache.index_select(0, flat) if isinstance(cache, torch.Tensor) else cache[flat]
    length = num_blocks * cache.shape[1]
    return blocks.reshape(num_rows, length, num_kv_heads, head_dim).transpose(1, 2).contiguous()


@dataclass(frozen=True)
class ShortQueryGroup:
    """Up to MAX_ROWS_PER_GATHER short-query requests attended in one call (tensors on the step's device)."""

    query_rows: torch.Tensor  # int64 [B * max_queries]: token row of each padded query, row-major (b, q)
    kept_positions: torch.Tensor  # int64 [n]: which of those padded queries are real, n = sum of query lengths
    output_rows: torch.Tensor  # int64 [n]: the token row each real query's output goes to
    block_tables: torch.Tensor  # int64 [B, max_blocks]: the requests' padded rows of the step's block tables
    query_positions: torch.Tensor  # int64 [B, max_queries]: each query's position (padding clamped, see module)
    max_queries: int  # longest query of the group, tokens
    max_context_len: int  # longest context of the group, tokens


@dataclass(frozen=True)
class ShortQueryBatch:
    """The step's short-query requests (2..MAX_SHORT_QUERY_TOKENS tokens), grouped by context length."""

    request_indices: list[int]  # requests attended here, in batch order
    groups: list[ShortQueryGroup]  # each request in exactly one group


def short_query_batch_of(metadata: AttentionMetadata) -> ShortQueryBatch | None:
    """The plan for the step's short queries (None when there are none); built once per step."""
    starts, context_lens = metadata.query_start_loc_host, metadata.seq_lens_host
    short = [r for r in range(metadata.num_reqs) if 2 <= starts[r + 1] - starts[r] <= MAX_SHORT_QUERY_TOKENS]
    if not short:
        return None
    order = sorted(short, key=context_lens.__getitem__)
    groups = [
        _plan_group(metadata, order[i : i + MAX_ROWS_PER_GATHER]) for i in range(0, len(order), MAX_ROWS_PER_GATHER)
    ]
    return ShortQueryBatch(short, groups)


def _plan_group(metadata: AttentionMetadata, requests: list[int]) -> ShortQueryGroup:
    starts, context_lens = metadata.query_start_loc_host, metadata.seq_lens_host
    max_queries = max(starts[r + 1] - starts[r] for r in requests)
    max_context_len = max(context_lens[r] for r in requests)
    query_rows, kept, output_rows, positions = [], [], [], []
    for b, r in enumerate(requests):
        num_queries, context_len = starts[r + 1] - starts[r], context_lens[r]
        for q in range(max_queries):
            real = q < num_queries
            query_rows.append(starts[r] + min(q, num_queries - 1))
            positions.append(context_len - num_queries + min(q, num_queries - 1))
            if real:
                kept.append(b * max_queries + q)
                output_rows.append(starts[r] + q)
    device = metadata.block_tables.device
    return ShortQueryGroup(
        query_rows=torch.tensor(query_rows).to(device),
        kept_positions=torch.tensor(kept).to(device),
        output_rows=torch.tensor(output_rows).to(device),
        block_tables=metadata.block_tables[torch.tensor(requests).to(device)].long(),
        query_positions=torch.tensor(positions).reshape(len(requests), max_queries).to(device),
        max_queries=max_queries,
        max_context_len=max_context_len,
    )


def short_query_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    batch: ShortQueryBatch,
    scale: float,
    output: torch.Tensor,
) -> None:
    """Writes the batch's rows of output ([num_tokens, heads, d]) from query (same shape)."""
    for group in batch.groups:
        attended = _attend_group(query, key_cache, value_cache, group, scale)  # [B * max_queries, heads, d]
        output.index_copy_(0, group.output_rows, attended.index_select(0, group.kept_positions))


def _attend_group(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, group: ShortQueryGroup, scale: float
) -> torch.Tensor:
    """key_cache[block_tables[:, :num_blocks]] [B, num_blocks, block_size, kv_heads, d] -> [B, kv_heads, L, d],
    L = num_blocks * block_size covering the longest context; key p kept for query (b, q) iff
    p <= query_positions[b, q]."""
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = key_cache.shape[2]
    num_rows, block_size = group.block_tables.shape[0], key_cache.shape[1]
    num_blocks = -(-group.max_context_len // block_size)
    tables, length = group.block_tables[:, :num_blocks], num_blocks * block_size
    keys = gather_kv(key_cache, tables, num_kv_heads, head_dim)
    values = gather_kv(value_cache, tables, num_kv_heads, head_dim)
    rows = query.index_select(0, group.query_rows).reshape(num_rows, group.max_queries, num_heads, head_dim)
    rows = rows.transpose(1, 2)  # [B, heads, Q, d]
    key_positions = torch.arange(length, device=query.device)
    keep = (key_positions[None, None, :] <= group.query_positions[:, :, None])[:, None]  # [B, 1, Q, L]
    if is_reduced_precision_on_cpu(query):
        attended = grouped_attention(rows, keys, values, keep, scale)
    else:
        attended = F.scaled_dot_product_attention(
            rows, keys, values, attn_mask=keep, scale=scale, enable_gqa=num_heads != num_kv_heads
        )
    return attended.transpose(1, 2).reshape(num_rows * group.max_queries, num_heads, head_dim)
