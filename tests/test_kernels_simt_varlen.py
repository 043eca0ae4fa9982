"""The varlen paged-attention kernel on CPU (SIMT emulator) against the float64 reference.

One launch mixes decodes (1-token queries), prefill chunks (N tokens, causal over a cached prefix)
and verify queries (k + 1 tokens); shapes cover GQA ratios 1-8 (and 16 through two row tiles),
head dims 64/128, block sizes 16/32, bf16/fp16 and int8 KV, chunks and contexts that start or end
on block boundaries, one partition and split-KV. Goal: within 1e-2 relative error (bf16/fp16 KV)
on every query row; int8 KV is held to 2e-2 against its dequantized values (the kernel folds the
scales into scores and weights). Cases stay small: the emulator runs about a million shuffles/s.
"""

from __future__ import annotations

import pytest
import torch

from services.engine.kernels.ops import SplitPlan, fixed_splits, plan_attention, row_tile_for, work_items_for
from tests.kernel_cases import make_varlen_case, reference_varlen, relative_error
from tests.kernel_sim_driver import HOST_COMPILER, build_driver, simulate_attention

pytestmark = pytest.mark.skipif(HOST_COMPILER is None, reason="no g++ to build the SIMT emulator")

# (query_len, seq_len): a decode, a first chunk ending on a block boundary, a later chunk crossing
# blocks, a verify of 4 tokens, a decode at a block's first position, a 1-token first prefill.
MIXED = [(1, 37), (16, 16), (9, 41), (4, 30), (1, 33), (1, 1)]
CASES = {  # name: (dtype, int8_kv, num_heads, num_kv_heads, head_dim, block_size, requests)
    "bf16-group3-d64-b16": (torch.bfloat16, False, 9, 3, 64, 16, MIXED),
    "fp16-mha-d128-b32": (torch.float16, False, 2, 2, 128, 32, MIXED),
    "bf16-gqa8-d128-b16": (torch.bfloat16, False, 8, 1, 128, 16, [(5, 20), (1, 64), (3, 3)]),
    "fp16-group16-d64-b16": (torch.float16, False, 16, 1, 64, 16, [(2, 18), (1, 5)]),
    "bf16-gqa2-d64-b32-decodes": (torch.bfloat16, False, 4, 2, 64, 32, [(1, 70), (1, 32), (1, 9)]),
    "int8-bf16-gqa4-d128-b16": (torch.bfloat16, True, 8, 2, 128, 16, [(1, 50), (7, 23), (2, 17)]),
    "int8-fp16-group3-d64-b32": (torch.float16, True, 6, 2, 64, 32, MIXED[:4]),
}


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return build_driver(tmp_path_factory.mktemp("simt"))


def _run(driver, directory, case, plan: SplitPlan, row_tile: int) -> torch.Tensor:
    paged = case.paged
    group = case.query.shape[1] // paged.key_cache.shape[2]
    items = work_items_for(torch.tensor(case.query_lens), group, row_tile)
    return simulate_attention(
        driver,
        directory,
        case.query,
        paged.key_cache,
        paged.value_cache,
        paged.key_scales,
        paged.value_scales,
        paged.block_tables,
        paged.context_lens,
        case.query_start_loc,
        items,
        paged.scale,
        plan,
        row_tile,
    )


def _row_errors(out: torch.Tensor, expected: torch.Tensor) -> list[float]:
    return [relative_error(out[t], expected[t]) for t in range(out.shape[0])]


@pytest.mark.parametrize("name", sorted(CASES))
def test_varlen_kernel_matches_float64_reference(driver, tmp_path, name):
    dtype, int8_kv, num_heads, num_kv_heads, head_dim, block_size, requests = CASES[name]
    case = make_varlen_case(requests, num_heads, num_kv_heads, head_dim, block_size, dtype, int8_kv, "cpu", len(name))
    expected = reference_varlen(case)
    threshold = 2e-2 if int8_kv else 1e-2
    max_seq = max(case.seq_lens)
    row_tile = row_tile_for(max(case.query_lens), num_heads // num_kv_heads)
    plans = {"one partition": SplitPlan(1, -(-max_seq // 16) * 16), "split": fixed_splits(max_seq, 3)}
    for plan_name, plan in plans.items():
        out = _run(driver, tmp_path / plan_name.replace(" ", "_"), case, plan, row_tile)
        errors = _row_errors(out, expected)
        assert max(errors) <= threshold, f"{plan_name}: worst row {max(errors):.3e} (row {errors.index(max(errors))})"


def test_planned_launch_with_tiny_partitions_and_every_row_tile(driver, tmp_path):
    """plan_attention's own work items; then 16-position partitions (many fully masked for the
    early rows of a chunk) under every row tile the kernel is compiled for."""
    case = make_varlen_case(MIXED, 9, 3, 64, 16, torch.bfloat16, False, "cpu", seed=31)
    expected = reference_varlen(case)
    starts = case.query_start_loc.tolist()
    plan = plan_attention(starts, max(case.query_lens), max(case.seq_lens), 9, 3, torch.device("cpu"), num_sms=1)
    assert plan.row_tile == 8 and plan.split.num_splits == 1
    paged = case.paged
    out = simulate_attention(
        driver,
        tmp_path / "planned",
        case.query,
        paged.key_cache,
        paged.value_cache,
        None,
        None,
        paged.block_tables,
        paged.context_lens,
        case.query_start_loc,
        plan.work_items,
        paged.scale,
        plan.split,
        8,
    )
    assert max(_row_errors(out, expected)) <= 1e-2
    for row_tile in (1, 2, 4):
        out = _run(driver, tmp_path / f"tile{row_tile}", case, SplitPlan(3, 16), row_tile)
        assert max(_row_errors(out, expected)) <= 1e-2, f"row tile {row_tile}"


def test_work_items_cover_every_row_once():
    items = work_items_for(torch.tensor([1, 5, 2]), group=3, row_tile=4).tolist()
    # rows per request: 3, 15, 6 -> tiles 1, 4, 2
    assert items == [[0, 0], [1, 0], [1, 4], [1, 8], [1, 12], [2, 0], [2, 4]]
    assert row_tile_for(1, 3) == 4 and row_tile_for(1, 1) == 1 and row_tile_for(7, 1) == 8 and row_tile_for(1, 16) == 8
