"""The CUDA paged decode kernel against a float64 reference on fresh random inputs (GPU only).

Every run writes into a NaN-filled output, and memory outside the contexts is poisoned
(tests/kernel_cases.py), so a skipped write or a stray read fails the test. Thresholds are
relative errors per sequence: fp16/bf16 KV <= 1e-2, int8 KV against the dequantized cache <= 2e-2.
Shapes cover MHA and GQA (groups 3, 4, 8, 16), head dims 64 and 128, block sizes 16 and 32,
contexts of 1 position, partial blocks and exact multiples, and split-KV from 1 to 63 partitions.
"""

import zlib

import pytest
import torch

from services.engine.kernels.loader import load_kernels
from services.engine.kernels.ops import SplitPlan, fixed_splits, paged_decode_attention
from tests.kernel_cases import make_case, reference_decode, relative_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CONTEXTS = [1, 15, 16, 17, 100, 515, 1000]
LAYOUTS = {"mha": (8, 8), "gqa4": (32, 8), "gqa8": (16, 2), "group3": (12, 4), "group16": (32, 2)}
THRESHOLDS = {False: 1e-2, True: 2e-2}  # by int8_kv


@pytest.fixture(scope="module", autouse=True)
def kernels():
    return load_kernels()  # a build failure fails every test here: on a GPU machine it is a bug


def _worst_sequence_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return max(relative_error(out[s], expected[s]) for s in range(out.shape[0]))


def _run(case, plan: SplitPlan | None) -> torch.Tensor:
    out = torch.full_like(case.query, float("nan"))  # poisoned: every element must be written
    paged_decode_attention(
        case.query,
        case.key_cache,
        case.value_cache,
        case.block_tables,
        case.context_lens,
        scale=case.scale,
        max_context_len=max(case.context_lens_list),
        key_scales=case.key_scales,
        value_scales=case.value_scales,
        out=out,
        split_plan=plan,
    )
    torch.cuda.synchronize()
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("int8_kv", [False, True], ids=["native_kv", "int8_kv"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_decode_matches_float64_reference(dtype, int8_kv, head_dim, block_size, layout):
    num_heads, num_kv_heads = LAYOUTS[layout]
    seed = zlib.crc32(repr((dtype, int8_kv, head_dim, block_size, layout)).encode())
    case = make_case(CONTEXTS, num_heads, num_kv_heads, head_dim, block_size, dtype, int8_kv, "cuda", seed)
    expected = reference_decode(case)
    plans = {
        "auto": None,
        "4 splits": fixed_splits(max(CONTEXTS), 4),
        "16-token partitions": SplitPlan(-(-max(CONTEXTS) // 16), 16),
    }
    for name, plan in plans.items():
        error = _worst_sequence_error(_run(case, plan), expected)
        assert error <= THRESHOLDS[int8_kv], f"{name}: relative error {error:.3e}"


@pytest.mark.parametrize("int8_kv", [False, True], ids=["bf16_kv", "int8_kv"])
def test_long_contexts_with_the_automatic_split(int8_kv):
    case = make_case([20000, 8192, 3], 32, 8, 128, 16, torch.bfloat16, int8_kv, "cuda", seed=11)
    error = _worst_sequence_error(_run(case, None), reference_decode(case))
    assert error <= THRESHOLDS[int8_kv]


def test_peaked_softmax_large_query():
    """Scores spanning tens of units: the running max must be tracked across tiles and splits."""
    case = make_case([700, 64, 5], 16, 4, 128, 16, torch.bfloat16, False, "cuda", seed=12, query_scale=8.0)
    expected = reference_decode(case)
    for plan in (None, fixed_splits(700, 5)):
        assert _worst_sequence_error(_run(case, plan), expected) <= 1e-2


def test_many_sequences_of_random_lengths():
    lengths = torch.randint(1, 600, (300,), generator=torch.Generator().manual_seed(13)).tolist()
    case = make_case(lengths, 8, 2, 64, 16, torch.float16, False, "cuda", seed=14)
    assert _worst_sequence_error(_run(case, None), reference_decode(case)) <= 1e-2


def test_zero_context_gives_zeros_and_others_are_unaffected():
    case = make_case([0, 40], 8, 8, 128, 16, torch.bfloat16, False, "cuda", seed=15)
    expected = reference_decode(case)
    for plan in (SplitPlan(1, 48), SplitPlan(3, 16)):
        out = _run(case, plan)
        assert torch.equal(out[0], torch.zeros_like(out[0]))
        assert relative_error(out[1], expected[1]) <= 1e-2


def test_strided_query_and_output_views():
    case = make_case([33, 260], 16, 4, 128, 16, torch.bfloat16, False, "cuda", seed=16)
    expected = reference_decode(case)
    wide = torch.full((2, 16, 256), float("nan"), dtype=torch.bfloat16, device="cuda")
    wide[:, :, 128:] = case.query
    case.query = wide[:, :, 128:]  # stride (4096, 256, 1)
    out_wide = torch.full_like(wide, float("nan"))
    out = out_wide[:, :, :128]
    paged_decode_attention(
        case.query,
        case.key_cache,
        case.value_cache,
        case.block_tables,
        case.context_lens,
        scale=case.scale,
        max_context_len=260,
        out=out,
    )
    assert relative_error(out, expected) <= 1e-2
    assert torch.isnan(out_wide[:, :, 128:]).all()  # nothing written outside the view


def test_invalid_inputs_raise_value_error():
    case = make_case([20], 8, 8, 128, 16, torch.bfloat16, True, "cuda", seed=17)
    common = dict(scale=case.scale, max_context_len=20)
    with pytest.raises(ValueError, match="int8 cache needs"):
        paged_decode_attention(
            case.query, case.key_cache, case.value_cache, case.block_tables, case.context_lens, **common
        )
    with pytest.raises(ValueError, match="block_tables"):
        paged_decode_attention(
            case.query,
            case.key_cache,
            case.value_cache,
            case.block_tables.long(),
            case.context_lens,
            key_scales=case.key_scales,
            value_scales=case.value_scales,
            **common,
        )
    with pytest.raises(ValueError, match="query must be float16 or bfloat16"):
        paged_decode_attention(
            case.query.float(),
            case.key_cache,
            case.value_cache,
            case.block_tables,
            case.context_lens,
            key_scales=case.key_scales,
            value_scales=case.value_scales,
            **common,
        )
    odd = make_case([20], 8, 8, 96, 16, torch.bfloat16, False, "cuda", seed=18)
    with pytest.raises(ValueError, match="head_dim must be 64 or 128"):
        paged_decode_attention(odd.query, odd.key_cache, odd.value_cache, odd.block_tables, odd.context_lens, **common)
