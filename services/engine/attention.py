"""Reference paged attention in torch: the CPU implementation and the correctness oracle.

For each request, its queries are the tokens fed this step, at positions
[context_len - num_query_tokens, context_len); its keys and values are read from the paged cache
through its block table, positions [0, context_len). Query i may attend to key positions
<= its own position (causal), which covers prefill chunks and single-token decodes alike.

`paged_attention_reference` runs one SDPA per request (the oracle). `decode_attention_reference`
runs the single-token requests of a step together over their gathered, padded KV (masked past
each context), in groups sorted by context length: on CPU a step of 16 decodes spends ~3x less in
attention than one call per request. Verifies and short prefill chunks (2..32 tokens) are batched the
same way with a per-row causal mask (short_query_attention.py); longer chunks take one SDPA each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from services.engine.short_query_attention import (
    MAX_ROWS_PER_GATHER,
    ShortQueryBatch,
    gather_kv,
    grouped_attention,
    is_reduced_precision_on_cpu,
    short_query_attention,
)


@dataclass(frozen=True)
class DecodeBatch:
    """The step's single-query requests as device tensors, for the CUDA decode kernel."""

    request_indices: list[int]  # requests with exactly one token this step, in batch order
    token_rows: torch.Tensor | None  # int64 [num_decodes] their token rows; None = rows 0..n-1 (all decode)
    block_tables: torch.Tensor  # int32 [num_decodes, max_blocks], each row padded past its blocks
    context_lens: torch.Tensor  # int32 [num_decodes]
    max_context_len: int  # largest of context_lens (plans the split without a device sync)
    context_lens_host: list[int]  # context_lens on the host (groups rows without a device sync)


@dataclass(frozen=True)
class AttentionMetadata:
    """Per-step tensors shared by every layer, with host copies of the small ones.

    The host copies (`*_host`, `max_*`) let the reference path slice per request and the kernels
    plan their launch without reading device tensors back (no sync per layer).

    Invariants: query_start_loc_host[0] == 0 and [-1] == num_tokens; request r's tokens are rows
    [query_start_loc[r], query_start_loc[r + 1]), its last positions: query length <= seq_lens[r];
    block_tables[r, :ceil(seq_lens[r] / block_size)] are its physical blocks, the rest of the row is
    padding (a valid block id, never read past seq_lens[r]).
    """

    slot_mapping: torch.Tensor  # int64 [num_tokens]: cache slot of each fed token (negative = skip)
    query_start_loc: torch.Tensor  # int32 [num_reqs + 1]: request r's tokens are [start[r], start[r+1])
    seq_lens: torch.Tensor  # int32 [num_reqs]: positions with KV after this step (context length)
    block_tables: torch.Tensor  # int32 [num_reqs, max_blocks]: physical blocks, rows padded
    query_start_loc_host: list[int]  # query_start_loc on the host
    seq_lens_host: list[int]  # seq_lens on the host
    max_query_len: int  # largest query length of the step
    max_seq_len: int  # largest of seq_lens
    decode_batch: DecodeBatch | None = None  # the single-token rows, set by the reference backend only
    short_queries: ShortQueryBatch | None = None  # the 2..32-token rows, set by the reference backend only
    kernel_plan: object | None = None  # the launch plan (kernels/ops.AttentionPlan), set by the CUDA backend only

    @property
    def num_reqs(self) -> int:
        return len(self.seq_lens_host)

    def block_table(self, request: int, block_size: int) -> torch.Tensor:
        """int64 physical blocks covering request's context (a view of its padded row)."""
        return self.block_tables[request, : -(-self.seq_lens_host[request] // block_size)].long()


def make_metadata(
    slot_mapping: torch.Tensor,
    query_start_loc_host: list[int],
    seq_lens_host: list[int],
    block_tables: list[list[int]] | torch.Tensor,
    device: torch.device | str | None = None,
) -> AttentionMetadata:
    """Builds the metadata from host lists (tests, benchmarks, the simple runner path).

    block_tables: per-request block lists (padded here with block 0) or an already padded
    [num_reqs, max_blocks] tensor. Tensors go to `device` (default: slot_mapping's).
    """
    device = slot_mapping.device if device is None else torch.device(device)
    if isinstance(block_tables, torch.Tensor):
        tables = block_tables.to(device=device, dtype=torch.int32)
    else:
        width = max(1, max((len(t) for t in block_tables), default=1))
        rows = [list(t) + [0] * (width - len(t)) for t in block_tables]
        tables = torch.tensor(rows, dtype=torch.int32).to(device)
    query_lens = [b - a for a, b in zip(query_start_loc_host, query_start_loc_host[1:])]
    return AttentionMetadata(
        slot_mapping=slot_mapping.to(device=device, dtype=torch.long),
        query_start_loc=torch.tensor(query_start_loc_host, dtype=torch.int32).to(device),
        seq_lens=torch.tensor(seq_lens_host, dtype=torch.int32).to(device),
        block_tables=tables,
        query_start_loc_host=list(query_start_loc_host),
        seq_lens_host=list(seq_lens_host),
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens_host, default=0),
    )


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
    block_size = key_cache.shape[1]
    for r, context_len in enumerate(metadata.seq_lens_host):
        start, stop = metadata.query_start_loc_host[r], metadata.query_start_loc_host[r + 1]
        output[start:stop] = attend_request(
            query[start:stop], key_cache, value_cache, metadata.block_table(r, block_size), context_len, scale
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
    if is_reduced_precision_on_cpu(query):  # CPU SDPA is fast in fp32 only: run it there
        k, v = keys.transpose(0, 1).float(), values.transpose(0, 1).float()
        attended = F.scaled_dot_product_attention(q.float(), k, v, attn_mask=mask, scale=scale, enable_gqa=group > 1)
        return attended.to(query.dtype).transpose(0, 1)
    k = keys.transpose(0, 1).repeat_interleave(group, dim=0)  # [heads, ctx, d]
    v = values.transpose(0, 1).repeat_interleave(group, dim=0)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return attended.transpose(0, 1)


def decode_batch_of(metadata: AttentionMetadata) -> DecodeBatch | None:
    """The step's single-token requests as one batch (None when there are none)."""
    starts = metadata.query_start_loc_host
    decodes = [r for r in range(metadata.num_reqs) if starts[r + 1] - starts[r] == 1]
    if not decodes:
        return None
    if len(decodes) == metadata.num_reqs:  # every request decodes: the step's tensors as they are
        return DecodeBatch(
            decodes, None, metadata.block_tables, metadata.seq_lens, metadata.max_seq_len, metadata.seq_lens_host
        )
    device = metadata.block_tables.device
    context_lens = [metadata.seq_lens_host[r] for r in decodes]
    return DecodeBatch(
        request_indices=decodes,
        token_rows=torch.tensor([starts[r] for r in decodes]).to(device),
        block_tables=metadata.block_tables[torch.tensor(decodes).to(device)],
        context_lens=torch.tensor(context_lens, dtype=torch.int32).to(device),
        max_context_len=max(context_lens),
        context_lens_host=context_lens,
    )


DecodeAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, DecodeBatch, float], torch.Tensor]


def attend_mixed(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: AttentionMetadata,
    scale: float,
    decode_attention: DecodeAttention,
) -> torch.Tensor:
    """Decode rows in one batched call, short queries (verifies, short chunks: metadata.short_queries) in
    batched groups, longer prefill chunks one request at a time (SDPA)."""
    batch, short = metadata.decode_batch, metadata.short_queries
    if batch is not None and batch.token_rows is None:  # every request decodes: no prefill rows
        return decode_attention(query, key_cache, value_cache, batch, scale)
    output = torch.empty_like(query)
    batched = set(batch.request_indices) if batch is not None else set()
    if batch is not None:
        rows = query.index_select(0, batch.token_rows)
        output.index_copy_(0, batch.token_rows, decode_attention(rows, key_cache, value_cache, batch, scale))
    if short is not None:
        short_query_attention(query, key_cache, value_cache, short, scale, output)
        batched.update(short.request_indices)
    starts, block_size = metadata.query_start_loc_host, key_cache.shape[1]
    for r, context_len in enumerate(metadata.seq_lens_host):
        if r not in batched:
            output[starts[r] : starts[r + 1]] = attend_request(
                query[starts[r] : starts[r + 1]],
                key_cache,
                value_cache,
                metadata.block_table(r, block_size),
                context_len,
                scale,
            )
    return output


def decode_attention_reference(
    query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, batch: DecodeBatch, scale: float
) -> torch.Tensor:
    """query [num_decodes, num_heads, head_dim] -> same shape.

    The KV of a group is gathered padded to the group's longest context, so rows are sorted by
    context length and gathered MAX_ROWS_PER_GATHER at a time: one long request no longer makes
    every row of the step copy its length (the gather is most of a CPU decode step).
    """
    context_lens = batch.context_lens_host
    order = sorted(range(len(context_lens)), key=context_lens.__getitem__)
    if len(order) <= MAX_ROWS_PER_GATHER:
        return _decode_group(
            query, key_cache, value_cache, batch.block_tables, batch.context_lens, batch.max_context_len, scale
        )
    output = torch.empty_like(query)
    for start in range(0, len(order), MAX_ROWS_PER_GATHER):
        group = order[start : start + MAX_ROWS_PER_GATHER]
        rows = torch.tensor(group).to(query.device)
        output[rows] = _decode_group(
            query[rows],
            key_cache,
            value_cache,
            batch.block_tables[rows],
            batch.context_lens[rows],
            max(context_lens[r] for r in group),
            scale,
        )
    return output


def _decode_group(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    max_context_len: int,
    scale: float,
) -> torch.Tensor:
    """One gather and one attention call for the group's rows.

    key_cache[block_tables[:, :num_blocks]]  [B, num_blocks, block_size, kv_heads, d]
        -> [B, kv_heads, num_blocks * block_size, d], positions >= context_len masked out
    """
    num_decodes, num_heads, head_dim = query.shape
    block_size, num_kv_heads = key_cache.shape[1], key_cache.shape[2]
    num_blocks = -(-max_context_len // block_size)
    tables = block_tables[:, :num_blocks].long()
    length = num_blocks * block_size
    keys = gather_kv(key_cache, tables, num_kv_heads, head_dim)
    values = gather_kv(value_cache, tables, num_kv_heads, head_dim)
    positions = torch.arange(length, device=query.device)
    mask = (positions[None, :] < context_lens[:, None].long())[:, None, None, :]  # [B, 1, 1, L]
    if is_reduced_precision_on_cpu(query):
        return grouped_attention(query[:, :, None, :], keys, values, mask, scale)[:, :, 0, :]
    attended = F.scaled_dot_product_attention(
        query[:, :, None, :], keys, values, attn_mask=mask, scale=scale, enable_gqa=num_heads != num_kv_heads
    )
    return attended[:, :, 0, :]
