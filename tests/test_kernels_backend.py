"""Backend choice, split-KV planning and decode-batch construction (CPU; no kernel runs)."""

import pytest
import torch

from services.engine.attention import make_metadata
from services.engine.kernels import ops
from services.engine.kernels.backend import AttentionBackendKind, CudaAttention, ReferenceAttention, choose_backend
from services.engine.kernels.loader import KernelUnavailable, load_kernels, source_digest
from tests.engine_model import make_core

CUDA = torch.device("cuda")  # only a name here: nothing is allocated on it


def _loads():
    return object()


def _fails():
    raise KernelUnavailable("nvcc exploded")


def test_cpu_device_gets_the_reference():
    choice = choose_backend(torch.device("cpu"), torch.float32, 128, 16, load=_loads)
    assert choice.kind is AttentionBackendKind.TORCH_REFERENCE and "cpu" in choice.reason


@pytest.mark.parametrize(
    "dtype, head_dim, block_size, reason",
    [(torch.float32, 128, 16, "dtype"), (torch.bfloat16, 96, 16, "head_dim"), (torch.float16, 64, 8, "block size")],
)
def test_unsupported_shapes_on_cuda_get_the_reference(dtype, head_dim, block_size, reason):
    choice = choose_backend(CUDA, dtype, head_dim, block_size, load=_loads)
    assert choice.kind is AttentionBackendKind.TORCH_REFERENCE and reason in choice.reason


def test_kernels_that_fail_to_load_fall_back_with_the_reason():
    choice = choose_backend(CUDA, torch.bfloat16, 128, 16, load=_fails)
    assert choice.kind is AttentionBackendKind.TORCH_REFERENCE and choice.reason == "nvcc exploded"
    assert choose_backend(CUDA, torch.bfloat16, 128, 32, load=_loads).kind is AttentionBackendKind.CUDA


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_loading_without_cuda_raises_kernel_unavailable_and_engine_uses_reference():
    with pytest.raises(KernelUnavailable, match="CPU-only|no CUDA device"):
        load_kernels()
    core = make_core(num_blocks=8, block_size=16, token_budget=16)
    assert core.runner.attention.kind is AttentionBackendKind.TORCH_REFERENCE


def test_source_digest_is_stable_and_hex():
    assert source_digest() == source_digest() and int(source_digest(), 16) >= 0


@pytest.mark.parametrize("num_seqs", [1, 8, 32, 64, 256])
@pytest.mark.parametrize("max_context_len", [1, 17, 128, 1000, 8192, 131072])
@pytest.mark.parametrize("num_heads, num_kv_heads", [(32, 32), (32, 8), (64, 8), (28, 4)])
def test_split_plan_covers_the_context_in_aligned_partitions(num_seqs, max_context_len, num_heads, num_kv_heads):
    plan = ops.plan_splits(num_seqs, num_heads, num_kv_heads, max_context_len, num_sms=132)
    assert plan.partition_tokens % ops.TILE_TOKENS == 0
    assert plan.num_splits * plan.partition_tokens >= max_context_len
    assert (plan.num_splits - 1) * plan.partition_tokens < max_context_len  # no empty partition
    if plan.num_splits > 1:
        assert plan.partition_tokens >= ops.MIN_PARTITION_TOKENS


def test_split_plan_splits_small_batches_only():
    assert ops.plan_splits(256, 32, 32, 8192, num_sms=132).num_splits == 1  # 8192 CTAs fill the GPU
    small = ops.plan_splits(1, 32, 8, 8192, num_sms=132)
    assert small.num_splits == 8192 // ops.MIN_PARTITION_TOKENS  # 8 CTAs: split as far as allowed
    assert ops.plan_splits(1, 32, 8, 100, num_sms=132).num_splits == 1  # too short to split


def test_ctas_per_sequence_follows_group_tiles():
    assert ops.ctas_per_sequence(32, 32) == 32  # MHA: one head per CTA
    assert ops.ctas_per_sequence(32, 8) == 8  # group 4 shares one CTA
    assert ops.ctas_per_sequence(28, 4) == 4  # group 7 -> tile 8
    assert ops.ctas_per_sequence(64, 2) == 8  # group 32 -> four tiles of 8 per kv head


def _metadata(num_queries: list[int], context_lens: list[int], tables: list[list[int]]):
    starts = [0]
    for n in num_queries:
        starts.append(starts[-1] + n)
    return make_metadata(torch.zeros(starts[-1], dtype=torch.long), starts, context_lens, tables)


def test_prepare_marks_single_token_rows_of_a_mixed_step():
    metadata = _metadata([1, 7, 1], [40, 7, 3], [[4, 1, 9], [2], [5]])
    batch = ReferenceAttention().prepare(metadata).decode_batch
    assert batch.request_indices == [0, 2]
    assert batch.token_rows.tolist() == [0, 8]
    assert batch.block_tables.dtype == torch.int32 and batch.block_tables.tolist() == [[4, 1, 9], [5, 0, 0]]
    assert batch.context_lens.tolist() == [40, 3] and batch.max_context_len == 40


def test_prepare_of_a_pure_decode_step_keeps_rows_in_place_and_prefill_gets_none():
    metadata = _metadata([1, 1], [17, 2], [[3, 8], [6]])
    batch = ReferenceAttention().prepare(metadata).decode_batch
    assert batch.token_rows is None and batch.request_indices == [0, 1]
    prefill = _metadata([5], [5], [[1]])
    assert ReferenceAttention().prepare(prefill).decode_batch is None


def test_cuda_prepare_plans_one_launch_for_a_mixed_step():
    metadata = _metadata([1, 7, 1], [40, 7, 3], [[4, 1, 9], [2], [5]])
    plan = CudaAttention(num_heads=4, num_kv_heads=2).prepare(metadata).kernel_plan
    assert plan.row_tile == 8  # a 7-token chunk x group 2 = 14 rows: full tiles of 8
    assert plan.work_items.tolist() == [[0, 0], [1, 0], [1, 8], [2, 0]]  # rows 2, 14, 2
    assert plan.num_work_items == 4 and plan.split.num_splits == 1  # CPU plan: one SM, no split


def test_cuda_prepare_of_a_pure_decode_step_needs_no_work_items():
    metadata = _metadata([1, 1], [17, 2], [[3, 8], [6]])
    plan = CudaAttention(num_heads=9, num_kv_heads=3).prepare(metadata).kernel_plan
    assert plan.work_items is None and plan.row_tile == 4 and plan.num_work_items == 2
