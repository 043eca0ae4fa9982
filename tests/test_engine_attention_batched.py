"""The CPU backend's batched decode and grouped-matmul paths equal the per-request SDPA oracle.

A step mixes single-token decodes (one batched call) with prefill chunks (per request); GQA 9/3
like SmolLM2. fp32 runs SDPA and must match tightly; bf16 runs grouped_attention (fp32 scores)
and must stay within bf16 rounding of the fp32 oracle.
"""

import pytest
import torch

from services.engine.attention import grouped_attention, make_metadata, paged_attention_reference
from services.engine.kernels.backend import ReferenceAttention
from services.engine.kv_cache import KvCacheShape, PagedKvCache

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 9, 3, 64, 8, 256
# (query tokens this step, context length after it): decodes, a first prefill chunk, a later chunk
REQUESTS = [(1, 5), (3, 19), (1, 40), (1, 1), (7, 7), (1, 33)]


def _step(dtype: torch.dtype, seed: int = 0, requests=REQUESTS):
    generator = torch.Generator().manual_seed(seed)
    cache = PagedKvCache(KvCacheShape(1, NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM), dtype, torch.device("cpu"))
    cache.key_cache[0].copy_(torch.randn(cache.key_cache[0].shape, generator=generator))
    cache.value_cache[0].copy_(torch.randn(cache.value_cache[0].shape, generator=generator))
    permutation = torch.randperm(NUM_BLOCKS, generator=generator)
    tables, starts, next_block = [], [0], 0
    for num_queries, context_len in requests:
        num_blocks = -(-context_len // BLOCK_SIZE)
        tables.append(permutation[next_block : next_block + num_blocks])
        next_block += num_blocks
        starts.append(starts[-1] + num_queries)
    metadata = make_metadata(
        torch.zeros(starts[-1], dtype=torch.long),
        starts,
        [context for _, context in requests],
        [table.tolist() for table in tables],
    )
    query = torch.randn(starts[-1], NUM_HEADS, HEAD_DIM, generator=generator).to(dtype)
    return query, cache, metadata


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_batched_decode_and_chunks_equal_the_per_request_oracle(dtype, tolerance):
    query, cache, metadata = _step(dtype)
    backend = ReferenceAttention()
    prepared = backend.prepare(metadata)
    assert prepared.decode_batch is not None and prepared.decode_batch.request_indices == [0, 2, 3, 5]
    got = backend.attend(query, cache, 0, prepared, 0.125).float()
    expected = paged_attention_reference(
        query.float(), cache.key_cache[0].float(), cache.value_cache[0].float(), metadata, 0.125
    )
    assert torch.allclose(got, expected, atol=tolerance, rtol=tolerance), (got - expected).abs().max()


def test_all_decode_step_takes_the_single_batched_call():
    query, cache, metadata = _step(torch.float32, seed=1)
    decodes = [0, 2, 3, 5]
    starts = [0, 1, 2, 3, 4]
    only_decodes = make_metadata(
        torch.zeros(4, dtype=torch.long),
        starts,
        [metadata.seq_lens_host[r] for r in decodes],
        metadata.block_tables[decodes],
    )
    rows = query[[metadata.query_start_loc_host[r] for r in decodes]]
    prepared = ReferenceAttention().prepare(only_decodes)
    assert prepared.decode_batch.token_rows is None
    got = ReferenceAttention().attend(rows, cache, 0, prepared, 0.125)
    expected = paged_attention_reference(rows, cache.key_cache[0], cache.value_cache[0], only_decodes, 0.125)
    assert torch.allclose(got, expected, atol=1e-5)


def test_grouped_attention_reads_kv_head_h_over_group_like_repeat_interleave():
    generator = torch.Generator().manual_seed(3)
    query = torch.randn(2, NUM_HEADS, 4, HEAD_DIM, generator=generator)
    keys = torch.randn(2, NUM_KV_HEADS, 10, HEAD_DIM, generator=generator)
    values = torch.randn(2, NUM_KV_HEADS, 10, HEAD_DIM, generator=generator)
    keep = torch.arange(10)[None, :] <= (torch.arange(4) + 6)[:, None]
    group = NUM_HEADS // NUM_KV_HEADS
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1), attn_mask=keep, scale=0.1
    )
    assert torch.allclose(grouped_attention(query, keys, values, keep[None, None], 0.1), expected, atol=1e-5)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_many_decodes_are_gathered_in_length_groups_with_the_same_result(dtype, tolerance):
    contexts = torch.randint(1, 48, (40,), generator=torch.Generator().manual_seed(5)).tolist()
    requests = [(1, context) for context in contexts] + [(4, 9)]  # 40 decodes (3 groups) and a chunk
    query, cache, metadata = _step(dtype, seed=2, requests=requests)
    backend = ReferenceAttention()
    got = backend.attend(query, cache, 0, backend.prepare(metadata), 0.125).float()
    expected = paged_attention_reference(
        query.float(), cache.key_cache[0].float(), cache.value_cache[0].float(), metadata, 0.125
    )
    assert torch.allclose(got, expected, atol=tolerance, rtol=tolerance), (got - expected).abs().max()
