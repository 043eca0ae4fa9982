"""The CUDA kernels' own code, run on CPU by the SIMT emulator, against the float64 reference.

tests/kernel_sim compiles the real .cu sources and launchers with g++ (-DALISE_SIMT): every CUDA
thread is a fiber, __syncthreads and warp shuffles are barriers. This executes the indexing, tiling,
warp reductions, online softmax, split-KV reduction and int8 quantize-on-write logic without a GPU.
It cannot see what only hardware shows (timing, memory ordering, alignment faults, PTX ex2), which
the `gpu` tests cover. Cases are small: the emulator runs about a million shuffles per second.
"""

from __future__ import annotations

import pytest
import torch

from services.engine import kv_quant
from services.engine.kernels.ops import SplitPlan, fixed_splits, plan_splits
from tests.kernel_cases import make_case, reference_decode, relative_error
from tests.kernel_sim_driver import HOST_COMPILER, build_driver, simulate_decode, simulate_write

pytestmark = pytest.mark.skipif(HOST_COMPILER is None, reason="no g++ to build the SIMT emulator")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return build_driver(tmp_path_factory.mktemp("simt"))


DECODE_CASES = {  # name: (dtype, int8_kv, num_heads, num_kv_heads, head_dim, block_size)
    "bf16-mha-d128-b16": (torch.bfloat16, False, 4, 4, 128, 16),
    "fp16-gqa4-d64-b32": (torch.float16, False, 8, 2, 64, 32),
    "bf16-group3-d128-b32": (torch.bfloat16, False, 6, 2, 128, 32),
    "bf16-gqa8-d128-b16": (torch.bfloat16, False, 8, 1, 128, 16),
    "fp16-group16-d64-b16": (torch.float16, False, 16, 1, 64, 16),
    "int8-bf16-gqa4-d128-b16": (torch.bfloat16, True, 8, 2, 128, 16),
    "int8-fp16-mha-d64-b32": (torch.float16, True, 2, 2, 64, 32),
    "int8-bf16-gqa8-d64-b16": (torch.bfloat16, True, 8, 1, 64, 16),
}
CONTEXTS = [1, 16, 17, 40, 290]


@pytest.mark.parametrize("name", sorted(DECODE_CASES))
def test_decode_kernel_matches_reference(driver, tmp_path, name):
    dtype, int8_kv, num_heads, num_kv_heads, head_dim, block_size = DECODE_CASES[name]
    case = make_case(CONTEXTS, num_heads, num_kv_heads, head_dim, block_size, dtype, int8_kv, "cpu", seed=len(name))
    expected = reference_decode(case)
    threshold = 2e-2 if int8_kv else 1e-2
    plans = {"one partition": SplitPlan(1, 304), "3 splits": fixed_splits(290, 3), "tiny partitions": SplitPlan(19, 16)}
    for plan_name, plan in plans.items():
        out = simulate_decode(driver, case, plan, tmp_path / plan_name.replace(" ", "_"))
        errors = [relative_error(out[s], expected[s]) for s in range(len(CONTEXTS))]
        assert max(errors) <= threshold, f"{plan_name}: per-sequence errors {errors}"


def test_decode_auto_plan_and_zero_context(driver, tmp_path):
    case = make_case([0, 700, 3], 4, 4, 64, 16, torch.bfloat16, False, "cpu", seed=21, query_scale=6.0)
    plan = plan_splits(3, 4, 4, 700, num_sms=132)
    assert plan.num_splits > 1  # 12 CTAs on 132 SMs: the planner splits
    out = simulate_decode(driver, case, plan, tmp_path)
    expected = reference_decode(case)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert max(relative_error(out[s], expected[s]) for s in (1, 2)) <= 1e-2


def test_native_write_kernel_equals_index_put(driver, tmp_path):
    shape = (6, 16, 2, 64)
    caches = [torch.full(shape, float("nan"), dtype=torch.bfloat16) for _ in range(2)]
    expected = [cache.clone() for cache in caches]
    slots = torch.tensor([17, 3, -1, 80, 95, 16])
    generator = torch.Generator().manual_seed(5)
    keys, values = (torch.randn(6, 2, 64, generator=generator).to(torch.bfloat16) for _ in range(2))
    kept = slots >= 0
    expected[0].view(-1, 2, 64)[slots[kept]] = keys[kept]
    expected[1].view(-1, 2, 64)[slots[kept]] = values[kept]
    simulate_write(driver, tmp_path, keys, values, caches, None, slots, 16)
    for actual, wanted in zip(caches, expected):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=0, equal_nan=True)


def test_int8_write_kernel_matches_reference_over_steps(driver, tmp_path):
    """Prefill chunks (one starting mid-block, one crossing blocks), a skipped slot, then decodes."""
    shape, block_size = (8, 16, 2, 64), 16
    generator = torch.Generator().manual_seed(6)
    caches = [torch.randint(-127, 128, shape, generator=generator, dtype=torch.int8) for _ in range(2)]
    scales = [torch.full((8, 2), float("nan")) for _ in range(2)]
    expected_caches, expected_scales = [c.clone() for c in caches], [s.clone() for s in scales]
    table = [6, 1, 4]
    steps = [list(range(0, 20)), [-1] + list(range(20, 35)), [35], [36], [37]]
    for index, positions in enumerate(steps):
        slots = torch.tensor([-1 if p < 0 else table[p // block_size] * block_size + p % block_size for p in positions])
        keys, values = (torch.randn(len(positions), 2, 64, generator=generator).to(torch.float16) for _ in range(2))
        for cache, scale, source in zip(expected_caches, expected_scales, (keys, values)):
            kv_quant.write_int8_reference(cache, scale, slots, source)
        simulate_write(driver, tmp_path, keys, values, caches, scales, slots, block_size)
        for actual, wanted in zip(caches, expected_caches):
            assert (actual.int() - wanted.int()).abs().max() <= 1, f"step {index}"
        for actual, wanted in zip(scales, expected_scales):
            torch.testing.assert_close(actual, wanted, rtol=1e-6, atol=0, equal_nan=True)
