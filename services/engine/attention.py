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
class AttentionMetadata:
    """Per-step index tensors shared by every layer."""

    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each fed token
    query_start_locs: list[int]  # [num_requests + 1]: request r's tokens are [start[r], start[r+1])
    context_lens: list[int]  # [num_requests]: positions with KV after this step, per request
    block_tables: list[torch.Tensor]  # per request, int64 physical block ids covering context_len


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
    num_heads = query.shape[1]
    num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
    group = num_heads // num_kv_heads
    output = torch.empty_like(query)
    for r, context_len in enumerate(metadata.context_lens):
        start, stop = metadata.query_start_locs[r], metadata.query_start_locs[r + 1]
        blocks = metadata.block_tables[r]
        keys = key_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:context_len]
        values = value_cache[blocks].reshape(-1, num_kv_heads, head_dim)[:context_len]
        num_queries = stop - start
        query_positions = torch.arange(context_len - num_queries, context_len, device=query.device)
        key_positions = torch.arange(context_len, device=query.device)
        mask = key_positions[None, :] <= query_positions[:, None]  # [num_queries, context_len]
        q = query[start:stop].transpose(0, 1)  # [heads, q, d]
        k = keys.transpose(0, 1).repeat_interleave(group, dim=0)  # [heads, ctx, d]
        v = values.transpose(0, 1).repeat_interleave(group, dim=0)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        output[start:stop] = attended.transpose(0, 1)
    return output
