"""The CUDA KV cache write against torch (GPU only): an exact copy for fp16/bf16, and for int8 the
quantize-on-write of services/engine/kv_quant.write_int8_reference over engine-like steps."""

import pytest
import torch

from services.engine import kv_quant
from services.engine.kernels.loader import load_kernels
from services.engine.kernels.ops import paged_decode_attention, write_kv_to_cache
from tests.kernel_cases import PagedCase, reference_decode, relative_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM = 24, 16, 4, 128


@pytest.fixture(scope="module", autouse=True)
def kernels():
    return load_kernels()


def _values(num_tokens, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_tokens, KV_HEADS, HEAD_DIM, generator=generator).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_native_write_equals_index_put(dtype):
    shape = (NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    key_cache = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
    value_cache = torch.full(shape, float("nan"), dtype=dtype, device="cuda")
    generator = torch.Generator().manual_seed(1)
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE, generator=generator)[:150]
    slots[::7] = -1  # skipped tokens
    keys, values = _values(150, dtype, 2).cuda(), _values(150, dtype, 3).cuda()
    expected_keys, expected_values = key_cache.clone(), value_cache.clone()
    kept = slots >= 0
    expected_keys.view(-1, KV_HEADS, HEAD_DIM)[slots[kept].cuda()] = keys[kept.cuda()]
    expected_values.view(-1, KV_HEADS, HEAD_DIM)[slots[kept].cuda()] = values[kept.cuda()]
    write_kv_to_cache(keys, values, key_cache, value_cache, slots.cuda())
    torch.testing.assert_close(key_cache, expected_keys, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(value_cache, expected_values, rtol=0, atol=0, equal_nan=True)


def _engine_like_steps() -> list[list[tuple[int, int, int]]]:
    """Per step, the (request, first position, num positions) chunks fed, as the scheduler would."""
    steps = [[(0, 0, 21), (1, 0, 5), (2, 0, 40)]]  # prefill chunks, one crossing two blocks
    steps.append([(0, 21, 16), (1, 5, 1), (2, 40, 1)])  # chunk starting mid-block + decodes
    for step in range(18):
        steps.append([(0, 37 + step, 1), (1, 6 + step, 1), (2, 41 + step, 1)])
    return steps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int8_write_matches_reference_step_by_step(dtype):
    tables = [[5, 17, 2, 9], [11, 0], [3, 22, 14, 7]]  # per request, physical blocks
    generator = torch.Generator().manual_seed(4)
    shape = (NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    caches = [torch.randint(-127, 128, shape, generator=generator, dtype=torch.int8) for _ in range(2)]
    scales = [torch.full((NUM_BLOCKS, KV_HEADS), float("nan")) for _ in range(2)]
    gpu = [t.cuda() for t in caches + scales]
    for index, step in enumerate(_engine_like_steps()):
        slots = [
            tables[r][p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
            for r, first, n in step
            for p in range(first, first + n)
        ]
        slot_mapping = torch.tensor(slots)
        keys, values = _values(len(slots), dtype, 100 + index), _values(len(slots), dtype, 200 + index)
        kv_quant.write_int8_reference(caches[0], scales[0], slot_mapping, keys)
        kv_quant.write_int8_reference(caches[1], scales[1], slot_mapping, values)
        write_kv_to_cache(
            keys.cuda(), values.cuda(), gpu[0], gpu[1], slot_mapping.cuda(), key_scales=gpu[2], value_scales=gpu[3]
        )
        for name, expected, actual in zip(("keys", "values"), caches, gpu[:2]):
            difference = (actual.cpu().int() - expected.int()).abs()
            assert difference.max() <= 1, f"step {index} {name}: codes differ by {difference.max()}"
            assert (difference == 0).float().mean() >= 0.999, f"step {index} {name}: too many codes differ"
        for expected, actual in zip(scales, gpu[2:]):
            torch.testing.assert_close(actual.cpu(), expected, rtol=1e-6, atol=0, equal_nan=True)


def test_int8_round_trip_through_both_kernels():
    """Token-by-token int8 writes, then decode: within quantization error of float64 on the originals."""
    context_lens, num_heads = [70, 33, 16], 16
    tables = [[0, 4, 8, 12, 1], [2, 6, 10], [3]]
    shape = (NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    caches = [torch.zeros(shape, dtype=torch.int8, device="cuda") for _ in range(2)]
    scales = [torch.full((NUM_BLOCKS, KV_HEADS), float("nan"), device="cuda") for _ in range(2)]
    exact = [torch.zeros(shape, dtype=torch.bfloat16) for _ in range(2)]
    for position in range(max(context_lens)):  # one decode step per position
        live = [r for r, n in enumerate(context_lens) if position < n]
        slots = torch.tensor([tables[r][position // BLOCK_SIZE] * BLOCK_SIZE + position % BLOCK_SIZE for r in live])
        keys, values = (
            _values(len(live), torch.bfloat16, 300 + position),
            _values(len(live), torch.bfloat16, 400 + position),
        )
        exact[0].view(-1, KV_HEADS, HEAD_DIM)[slots] = keys
        exact[1].view(-1, KV_HEADS, HEAD_DIM)[slots] = values
        write_kv_to_cache(
            keys.cuda(), values.cuda(), caches[0], caches[1], slots.cuda(), key_scales=scales[0], value_scales=scales[1]
        )
    padded = [t + [t[0]] * (5 - len(t)) for t in tables]
    query = torch.randn(3, num_heads, HEAD_DIM, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16).cuda()
    block_tables = torch.tensor(padded, dtype=torch.int32, device="cuda")
    lens = torch.tensor(context_lens, dtype=torch.int32, device="cuda")
    out = torch.full_like(query, float("nan"))
    paged_decode_attention(
        query,
        caches[0],
        caches[1],
        block_tables,
        lens,
        scale=HEAD_DIM**-0.5,
        max_context_len=70,
        key_scales=scales[0],
        value_scales=scales[1],
        out=out,
    )
    original = PagedCase(query, exact[0], exact[1], None, None, block_tables, lens, context_lens, HEAD_DIM**-0.5)
    assert relative_error(out, reference_decode(original)) <= 3e-2
