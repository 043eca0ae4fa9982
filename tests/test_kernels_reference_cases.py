"""The kernel tests' float64 reference and poisoned cases are themselves right (CPU).

reference_decode (explicit per-head softmax) must equal the engine's SDPA-based
paged_attention_reference on the same dequantized cache, and the poison must sit only where a
correct kernel never reads: otherwise the GPU tests would prove nothing.
"""

import pytest
import torch

from services.engine.attention import make_metadata, paged_attention_reference
from tests.kernel_cases import make_case, reference_decode, relative_error

CONTEXTS = [1, 15, 16, 17, 100]


def _dequantized(cache, scales):
    return cache.double() if scales is None else cache.double() * scales.double()[:, None, :, None]


@pytest.mark.parametrize("int8_kv", [False, True])
@pytest.mark.parametrize("num_heads, num_kv_heads, head_dim, block_size", [(8, 8, 64, 16), (12, 4, 128, 32)])
def test_harness_reference_equals_the_engine_reference(int8_kv, num_heads, num_kv_heads, head_dim, block_size):
    case = make_case(CONTEXTS, num_heads, num_kv_heads, head_dim, block_size, torch.bfloat16, int8_kv, "cpu", seed=3)
    metadata = make_metadata(
        torch.zeros(len(CONTEXTS), dtype=torch.long), list(range(len(CONTEXTS) + 1)), CONTEXTS, case.block_tables
    )
    keys = _dequantized(case.key_cache, case.key_scales)
    values = _dequantized(case.value_cache, case.value_scales)
    engine = paged_attention_reference(case.query.double(), keys, values, metadata, case.scale)
    assert relative_error(reference_decode(case), engine) < 1e-12


def test_poison_covers_unused_blocks_past_context_positions_and_table_padding():
    case = make_case([17, 3], 4, 4, 64, 16, torch.float16, False, "cpu", seed=4)
    tables = case.block_tables.tolist()
    used = {tables[0][0], tables[0][1], tables[1][0]}
    assert (
        torch.isnan(case.key_cache[tables[0][1], 1:]).all() and not torch.isnan(case.key_cache[tables[0][1], 0]).any()
    )
    assert (
        torch.isnan(case.value_cache[tables[1][0], 3:]).all()
        and not torch.isnan(case.value_cache[tables[1][0], :3]).any()
    )
    assert tables[1][1] not in used and torch.isnan(case.key_cache[tables[1][1]]).all()  # padding -> poisoned block
    spare = set(range(case.key_cache.shape[0])) - used
    assert all(torch.isnan(case.key_cache[b]).all() for b in spare)
    assert relative_error(torch.full((2,), float("nan")), torch.ones(2)) == float("inf")


def test_int8_case_poisons_scales_of_unused_blocks():
    case = make_case([20], 4, 2, 64, 16, torch.bfloat16, True, "cpu", seed=5)
    used = set(case.block_tables[0, :2].tolist())
    for block in range(case.key_cache.shape[0]):
        assert torch.isnan(case.key_scales[block]).all() == (block not in used)
