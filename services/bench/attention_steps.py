"""A random attention step over a paged KV cache: what the attention benchmarks and tests feed the backends.

One place builds it so the micro-benchmark (spec_verify_attention.py) times the same kind of step the
exactness tests check (tests/test_attention_short_queries.py): every request's blocks drawn from a random
permutation of the pool (tables are not contiguous, as after preemptions), its query rows the last
positions of its context.
"""

from __future__ import annotations

import torch

from services.engine.attention import AttentionMetadata, make_metadata
from services.engine.kv_cache import KvCacheShape, PagedKvCache


def random_attention_step(
    requests: list[tuple[int, int]],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int,
    num_spare_blocks: int = 1,
) -> tuple[torch.Tensor, PagedKvCache, AttentionMetadata]:
    """(query [tokens, heads, head_dim], a one-layer cache, metadata) for requests of (query tokens, context
    tokens after the step). Values are drawn in float64 and cast to dtype, so every dtype sees the same step."""
    generator = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-context // block_size) for _, context in requests) + num_spare_blocks
    cache = PagedKvCache(KvCacheShape(1, num_blocks, block_size, num_kv_heads, head_dim), dtype, torch.device("cpu"))
    cache.key_cache[0].copy_(torch.randn(cache.key_cache[0].shape, generator=generator, dtype=torch.float64))
    cache.value_cache[0].copy_(torch.randn(cache.value_cache[0].shape, generator=generator, dtype=torch.float64))
    permutation = torch.randperm(num_blocks, generator=generator).tolist()
    tables, starts = [], [0]
    for num_queries, context in requests:
        tables.append([permutation.pop() for _ in range(-(-context // block_size))])
        starts.append(starts[-1] + num_queries)
    metadata = make_metadata(torch.zeros(starts[-1], dtype=torch.long), starts, [c for _, c in requests], tables)
    query = torch.randn(starts[-1], num_heads, head_dim, generator=generator, dtype=torch.float64).to(dtype)
    return query, cache, metadata
