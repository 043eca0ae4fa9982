"""Reference paged attention in torch: the CPU implementation and the correctness oracle.

For each request, its queries are the tokens fed this step, at positions
[context_len - num_query_tokens, context_len); its keys and values are read from the paged cache
through its block table, positions [0, context_len). Query i may attend to key positions
<= its own position (causal), which covers prefill chunks and single-token decodes alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DecodeBatch:
    """The step's single-query requests as device tensors, for the CUDA decode kernel."""

    request_indices: list[int]  # requests with exactly one token this step, in batch order
    token_rows: torch.Tensor | None  # int64 [num_decodes] their token rows; None = rows 0..n-1 (all decode)
    block_tables: torch.Tensor  # int32 [num_decodes, max_blocks], each row padded past its blocks
    context_lens: torch.Tensor  # int32 [num_decodes]
    max_context_len: int  # largest of context_lens (plans the split without a device sync)


@dataclass(frozen=True)
class AttentionMetadata:
    """Per-step index tensors shared by every layer."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each fed token
    query_start_locs: list[int]  # [num_requests + 1]: request r's tokens are [start[r], start[r+1])
    context_lens: list[int]  # [num_requests]: positions with KV after this step, per request
    block_tables: list[torch.Tensor]  # per request, int64 physical block ids covering context_len
    decode_batch: DecodeBatch | None = None  # set by the CUDA backend (kernels/backend.py) only


def paged_attention_reference(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """query [num_tokens, num_heads, head_dim]; caches [num_blocks, block_size, kv_heads, head_dim].

    Returns [num_tokens, num_heads, head_dim]. GQA: each KV head serves num_heads / kv_heads
    consecutive query heads.
    """
    output = torch.empty_like(query)
    for r, context_len in enumerate(metadata.context_lens):
        start, stop = metadata.query_start_locs[r], metadata.query_start_locs[r + 1]
        output[start:stop] = attend_request(
            query[start:stop], key_cache, value_cache, metadata.block_tables[r], context_len, scale
        )
    return output


def attend_request(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    context_len: int,
    scale: float,
) -> torch.Tensor:
    """One request's query rows [num_queries, num_heads, head_dim], the last positions of its context."""
    num_heads = query.shape[1]
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    group = num_heads // num_kv_heads
    keys = key_cache[block_table].reshape(-1, num_kv_heads, head_dim)[:context_len]
    values = value_cache[block_table].reshape(-1, num_kv_heads, head_dim)[:context_len]
    num_queries = query.shape[0]
    query_positions = torch.arange(context_len - num_queries, context_len, device=query.device)
    key_positions = torch.arange(context_len, device=query.device)
    mask = key_positions[None, :] <= query_positions[:, None]  # [num_queries, context_len]
    q = query.transpose(0, 1)  # [heads, q, d]
    k = keys.transpose(0, 1).repeat_interleave(group, dim=0)  # [heads, ctx, d]
    v = values.transpose(0, 1).repeat_interleave(group, dim=0)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return attended.transpose(0, 1)
