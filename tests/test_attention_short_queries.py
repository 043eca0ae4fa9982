"""Verifies and short prefill chunks, batched on the reference backend, equal the float64 per-request oracle.

Random mixed steps: decodes, verifies of different k, short chunks (<= 32 tokens, batched) and longer chunks
(one SDPA each), contexts on and off block boundaries, several GQA ratios and block sizes. The oracle is
paged_attention_reference in float64 over the same cache contents.
"""

import random

import pytest
import torch

from services.bench.attention_steps import random_attention_step
from services.engine.attention import paged_attention_reference
from services.engine.kernels.backend import ReferenceAttention
from services.engine.short_query_attention import MAX_ROWS_PER_GATHER, MAX_SHORT_QUERY_TOKENS

HEAD_DIM = 32
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _random_requests(rng: random.Random, num_requests: int, block_size: int) -> list[tuple[int, int]]:
    """(query tokens, context length after the step) per request: decodes, verifies, short and long chunks."""
    requests = []
    for _ in range(num_requests):
        kind = rng.choice(["decode", "verify", "verify", "short-chunk", "long-chunk"])
        num_queries = {
            "decode": 1,
            "verify": rng.randint(2, 17),
            "short-chunk": rng.randint(2, MAX_SHORT_QUERY_TOKENS),
            "long-chunk": rng.randint(MAX_SHORT_QUERY_TOKENS + 1, 70),
        }[kind]
        context = rng.choice([rng.randint(num_queries, 160), block_size * rng.randint(1, 9)])
        requests.append((num_queries, max(context, num_queries)))
    return requests


def _step(requests, num_heads: int, num_kv_heads: int, block_size: int, dtype: torch.dtype, seed: int):
    return random_attention_step(
        requests,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=HEAD_DIM,
        block_size=block_size,
        dtype=dtype,
        seed=seed,
        num_spare_blocks=4,
    )


def _check_against_float64_oracle(requests, num_heads, num_kv_heads, block_size, dtype, seed):
    query, cache, metadata = _step(requests, num_heads, num_kv_heads, block_size, dtype, seed)
    backend = ReferenceAttention()
    got = backend.attend(query, cache, 0, backend.prepare(metadata), HEAD_DIM**-0.5).double()
    keys, values = cache.key_cache[0].double(), cache.value_cache[0].double()
    expected = paged_attention_reference(query.double(), keys, values, metadata, HEAD_DIM**-0.5)
    error = (got - expected).abs().max().item()
    assert error <= TOLERANCE[dtype], (error, requests)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_heads, num_kv_heads, block_size", [(9, 3, 8), (4, 4, 16), (8, 2, 16), (6, 1, 8)])
def test_random_mixed_steps_equal_the_float64_oracle(dtype, num_heads, num_kv_heads, block_size):
    rng = random.Random(f"{dtype}-{num_heads}-{num_kv_heads}-{block_size}")
    for trial in range(3):
        requests = _random_requests(rng, rng.randint(1, 2 * MAX_ROWS_PER_GATHER + 3), block_size)
        _check_against_float64_oracle(requests, num_heads, num_kv_heads, block_size, dtype, seed=trial)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_step_of_only_verifies_across_groups_equals_the_oracle(dtype):
    """Batch 20, every request verifying (k+1 = 2..17) over contexts ending on and off block boundaries."""
    rng = random.Random(7)
    requests = [(rng.randint(2, 17), rng.choice([16 * rng.randint(2, 6), rng.randint(20, 100)])) for _ in range(20)]
    _check_against_float64_oracle(requests, 9, 3, 16, dtype, seed=11)


def test_a_query_as_long_as_its_context_is_a_first_chunk_and_stays_causal():
    _check_against_float64_oracle([(5, 5), (32, 32), (1, 1), (2, 2)], 9, 3, 8, torch.float32, seed=3)


def test_prepare_plans_short_queries_by_context_length_and_leaves_long_chunks_and_decodes_out():
    requests = [(1, 40), (9, 100), (33, 33), (17, 30), (32, 64), (2, 2)]
    _, _, metadata = _step(requests, 9, 3, 8, torch.float32, seed=0)
    short = ReferenceAttention().prepare(metadata).short_queries
    assert short.request_indices == [1, 3, 4, 5]
    (group,) = short.groups
    assert group.max_queries == 32 and group.max_context_len == 100
    # sorted by context: request 5 (2 tokens over 2), 3 (17 over 30), 4 (32 over 64), 1 (9 over 100)
    first_rows = group.query_rows.reshape(4, 32)[:, 0].tolist()
    assert first_rows == [metadata.query_start_loc_host[r] for r in (5, 3, 4, 1)]
    # padding queries repeat the row's last position; real ones end at context - 1
    assert group.query_positions[0].tolist() == [0, 1] + [1] * 30
    assert group.query_positions[3, :9].tolist() == list(range(91, 100)) and group.query_positions[3, 9] == 99
    assert len(group.kept_positions) == 2 + 17 + 32 + 9
    only_decodes = ReferenceAttention().prepare(_step([(1, 5), (40, 40)], 9, 3, 8, torch.float32, 0)[2])
    assert only_decodes.short_queries is None
