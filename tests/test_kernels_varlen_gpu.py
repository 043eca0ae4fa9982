"""The varlen paged-attention kernel on a GPU against the float64 reference (GPU only).

Mixed launches (decodes, prefill chunks over a cached prefix, verify queries) with GQA 1-16,
head dims 64/128, block sizes 16/32, bf16/fp16 and int8 KV, planned by ops.plan_attention (work
items, row tile, split) and with forced splits. The output starts NaN and unused memory is
poisoned (tests/kernel_cases.py). Thresholds per query row: 1e-2 (fp16/bf16 KV), 2e-2 (int8 KV
against its dequantized values). Also: the engine's CUDA backend against the reference backend.
"""

import zlib

import pytest
import torch

from services.engine.kernels.loader import load_kernels
from services.engine.kernels.ops import AttentionPlan, fixed_splits, paged_attention, plan_attention
from tests.kernel_cases import make_varlen_case, reference_varlen, relative_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

STEPS = {
    "mixed": [(1, 1000), (512, 512), (100, 615), (5, 77), (1, 16), (1, 1), (33, 48)],
    "decodes": [(1, n) for n in (1, 15, 16, 17, 100, 515, 2049)],
    "verify": [(4, 40), (8, 1031), (5, 5)],
}
LAYOUTS = {"mha": (8, 8), "gqa4": (32, 8), "group3": (9, 3), "group16": (32, 2)}


@pytest.fixture(scope="module", autouse=True)
def kernels():
    return load_kernels()


@pytest.mark.parametrize("step", sorted(STEPS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("head_dim, block_size", [(64, 16), (128, 32)])
@pytest.mark.parametrize("dtype, int8_kv", [(torch.bfloat16, False), (torch.float16, False), (torch.bfloat16, True)])
def test_varlen_kernel_matches_reference(step, layout, head_dim, block_size, dtype, int8_kv):
    num_heads, num_kv_heads = LAYOUTS[layout]
    requests = STEPS[step]
    seed = zlib.crc32(f"{step}-{layout}-{head_dim}-{dtype}-{int8_kv}".encode()) % 1000
    case = make_varlen_case(requests, num_heads, num_kv_heads, head_dim, block_size, dtype, int8_kv, "cuda", seed)
    expected = reference_varlen(case)
    starts = case.query_start_loc.tolist()
    planned = plan_attention(
        starts, max(case.query_lens), max(case.seq_lens), num_heads, num_kv_heads, torch.device("cuda")
    )
    forced = AttentionPlan(
        planned.row_tile, planned.work_items, planned.num_work_items, fixed_splits(max(case.seq_lens), 7)
    )
    threshold = 2e-2 if int8_kv else 1e-2
    paged = case.paged
    for plan in (planned, forced):
        out = torch.full_like(case.query, float("nan"))
        paged_attention(
            case.query,
            paged.key_cache,
            paged.value_cache,
            paged.block_tables,
            paged.context_lens,
            None if plan.work_items is None else case.query_start_loc,
            plan,
            scale=paged.scale,
            key_scales=paged.key_scales,
            value_scales=paged.value_scales,
            out=out,
        )
        torch.cuda.synchronize()
        worst = max(relative_error(out[t], expected[t]) for t in range(out.shape[0]))
        assert worst <= threshold, f"plan {plan.split}: worst row error {worst:.3e}"


@pytest.mark.parametrize("kv_dtype", [None, torch.int8])
def test_engine_cuda_backend_matches_reference_backend(kv_dtype):
    from services.common.model_catalog import DUMMY_TINY_MODEL
    from services.engine.block_pool import KvBlockManager
    from services.engine.engine_core import EngineCore
    from services.engine.kernels.backend import CudaAttention, ReferenceAttention
    from services.engine.model_loader import load_model
    from services.engine.model_runner import ModelRunner
    from services.engine.scheduler import Scheduler, SchedulerLimits, make_policy
    from tests.engine_model import greedy, new_request
    from tests.kernel_cases import run_steps_comparing_backends

    loaded = load_model(DUMMY_TINY_MODEL, dtype=torch.bfloat16, device=torch.device("cuda"), seed=0)
    kv = KvBlockManager(256, 16)
    scheduler = Scheduler(make_policy("fcfs"), SchedulerLimits(8, 64, 2048), kv, loaded.eos_token_id)
    runner = ModelRunner(loaded.model, kv, 256, enforce_eager=True, kv_dtype=kv_dtype)
    core = EngineCore(scheduler, runner)
    for index, length in enumerate((150, 5, 70, 1)):
        prompt = torch.randint(3, 32000, (length,), generator=torch.Generator().manual_seed(index)).tolist()
        core.add(new_request(f"r{index}", prompt, greedy(8)))
    candidate = CudaAttention(runner.num_heads, runner.num_kv_heads)
    kinds = run_steps_comparing_backends(core, candidate, ReferenceAttention(), threshold=3e-2)
    assert {(False,), (True,)} <= kinds
