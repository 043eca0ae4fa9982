"""KV codec for swapping: sizes, bit-exact FULL round trips, int8/int4 error bounds on random data and
on attention outputs, and greedy generation on the default model after a swap round trip."""

import pytest
import torch

from services.engine import kv_quant
from services.engine.attention import make_metadata, paged_attention_reference
from services.engine.kv_cache import KvCacheShape, PagedKvCache
from services.engine.kv_offload import swap_agreement
from services.engine.kv_offload.kv_codec import (
    KvCodec,
    decode_blocks,
    default_int4_group_size,
    encode_blocks,
    encoded_size_bytes,
    measure_codec_errors,
)
from services.engine.kv_offload.swap_agreement import SwapRoundTrip, generate, measure_agreement
from tests.engine_model import make_core

torch.set_num_threads(1)
SHAPE = KvCacheShape(num_layers=3, num_blocks=12, block_size=16, num_kv_heads=2, head_dim=64)
BLOCK_IDS = [7, 2, 10, 5]  # a request's blocks, in logical order (not sorted, as in a real table)
CPU = torch.device("cpu")


def _random_cache(dtype=torch.float32, seed=0, outlier_channels=0, shape=SHAPE, device=CPU) -> PagedKvCache:
    """Gaussian K and V; the first outlier_channels dims of every K head 6x larger (as in real K)."""
    cache = PagedKvCache(shape, dtype, device)
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(cache.key_cache.shape, generator=generator)
    keys[..., :outlier_channels] *= 6.0
    cache.key_cache.copy_(keys)
    cache.value_cache.copy_(torch.randn(cache.value_cache.shape, generator=generator))
    return cache


def _round_trip(cache, codec, source_ids=BLOCK_IDS, target_ids=BLOCK_IDS, group_size=None):
    """Encodes source blocks, zeroes them, decodes into target blocks (a resume may get new ones)."""
    data = encode_blocks(cache, source_ids, codec, group_size)
    cache.key_cache[:, source_ids] = 0
    cache.value_cache[:, source_ids] = 0
    decode_blocks(data, cache, target_ids, codec, group_size)
    return data


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_full_round_trip_is_bit_exact_and_touches_only_target_blocks(dtype):
    cache = _random_cache(dtype)
    keys, values = cache.key_cache.clone(), cache.value_cache.clone()
    _round_trip(cache, KvCodec.FULL)
    assert torch.equal(cache.key_cache, keys) and torch.equal(cache.value_cache, values)
    targets = [0, 1, 3, 4]  # a resume gets other physical blocks
    _round_trip(cache, KvCodec.FULL, BLOCK_IDS, targets)
    assert torch.equal(cache.key_cache[:, targets], keys[:, BLOCK_IDS])
    assert torch.equal(cache.value_cache[:, targets], values[:, BLOCK_IDS])
    untouched = [b for b in range(SHAPE.num_blocks) if b not in targets + BLOCK_IDS]
    assert torch.equal(cache.key_cache[:, untouched], keys[:, untouched])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("codec", list(KvCodec))
@pytest.mark.parametrize("num_blocks", [0, 1, 4])
def test_encoding_size_is_encoded_size_bytes(dtype, codec, num_blocks):
    cache = _random_cache(dtype)
    data = encode_blocks(cache, BLOCK_IDS[:num_blocks], codec)
    assert data.dtype == torch.uint8 and data.dim() == 1 and data.device.type == "cpu" and data.is_contiguous()
    assert data.numel() == encoded_size_bytes(SHAPE, dtype, num_blocks, codec)


def test_encoded_sizes_follow_the_layout_arithmetic():
    num_blocks, group = 5, default_int4_group_size(SHAPE.head_dim)
    values = 2 * SHAPE.num_layers * num_blocks * SHAPE.block_size * SHAPE.num_kv_heads * SHAPE.head_dim
    full_bfloat16 = encoded_size_bytes(SHAPE, torch.bfloat16, num_blocks, KvCodec.FULL)
    assert full_bfloat16 == num_blocks * SHAPE.block_bytes(torch.bfloat16)
    assert encoded_size_bytes(SHAPE, torch.float32, num_blocks, KvCodec.FULL) == 4 * values
    # int8: one byte per value + a float32 scale per (K/V, layer, block, head)
    scales = 2 * SHAPE.num_layers * num_blocks * SHAPE.num_kv_heads
    assert encoded_size_bytes(SHAPE, torch.float32, num_blocks, KvCodec.INT8) == values + 4 * scales
    # int4: half a byte per value + a float32 scale and minimum per group
    assert encoded_size_bytes(SHAPE, torch.bfloat16, num_blocks, KvCodec.INT4) == values // 2 + 8 * values // group
    assert encoded_size_bytes(SHAPE, torch.float32, num_blocks, KvCodec.INT4, 16) == values // 2 + 8 * values // 16


def test_default_int4_group_size_divides_head_dim():
    assert [default_int4_group_size(d) for d in (16, 32, 64, 80, 96, 128, 256)] == [16, 32, 32, 16, 32, 32, 32]
    with pytest.raises(ValueError, match="group size"):
        encoded_size_bytes(SHAPE, torch.float32, 1, KvCodec.INT4, 48)


def _kv(cache, block_ids):
    """[2, L, n, B, H, D] float32 of those blocks."""
    return torch.stack((cache.key_cache[:, block_ids], cache.value_cache[:, block_ids])).float()


def test_int8_round_trip_error_is_within_half_a_step_per_block_and_head():
    cache = _random_cache(outlier_channels=4)
    original = _kv(cache, BLOCK_IDS)
    _round_trip(cache, KvCodec.INT8)
    restored = _kv(cache, BLOCK_IDS)
    step = original.abs().amax(dim=(-3, -1), keepdim=True) / 127  # one scale per (K/V, layer, block, head)
    assert torch.all((restored - original).abs() <= step / 2 * (1 + 1e-6))
    assert 0 < (restored - original).abs().amax()


@pytest.mark.parametrize("group_size", [16, 32, 64])
def test_int4_round_trip_error_is_within_half_a_step_per_group(group_size):
    cache = _random_cache(outlier_channels=4)
    original = _kv(cache, BLOCK_IDS)
    _round_trip(cache, KvCodec.INT4, group_size=group_size)
    restored = _kv(cache, BLOCK_IDS)
    grouped = original.unflatten(-1, (-1, group_size))
    step = ((grouped.amax(-1) - grouped.amin(-1)) / 15).repeat_interleave(group_size, dim=-1)
    assert torch.all((restored - original).abs() <= step / 2 * (1 + 1e-5) + 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relative_errors_on_gaussian_kv(dtype):
    """Uniform rounding noise has rms step / sqrt(12). int8: the absmax of 16 x 64 Gaussian values is
    ~3.3 sigma, step 3.3 / 127 = 0.026 -> 0.75%; int4 (groups of 32): the range of 32 values is ~4.1
    sigma, step 4.1 / 15 = 0.27 -> 7.9%. bfloat16 adds its rounding (<= 0.4%, rms ~0.1%).
    Measured: int8 0.78%, int4 7.9% (both dtypes). Bounds: 1% and 9%."""
    cache = _random_cache(dtype, seed=3)
    original = _kv(cache, BLOCK_IDS)
    errors = measure_codec_errors(cache, BLOCK_IDS)
    assert torch.equal(_kv(cache, BLOCK_IDS), original)  # measuring does not modify the cache
    for codec, bound in ((KvCodec.INT8, 0.01), (KvCodec.INT4, 0.09)):
        copy = _random_cache(dtype, seed=3)
        _round_trip(copy, codec)
        actual = kv_quant.relative_error(_kv(copy, BLOCK_IDS), original)
        assert errors[codec] == pytest.approx(actual, rel=1e-6)  # the measure is the real round trip's
        assert 0 < errors[codec] < bound
    assert errors[KvCodec.FULL] == 0.0


@pytest.mark.parametrize("codec", [KvCodec.INT8, KvCodec.INT4])
def test_lossy_decode_touches_only_its_blocks(codec):
    cache = _random_cache(torch.bfloat16)
    keys, values = cache.key_cache.clone(), cache.value_cache.clone()
    decode_blocks(encode_blocks(cache, BLOCK_IDS, codec), cache, [0, 1, 3, 4], codec)
    others = [b for b in range(SHAPE.num_blocks) if b not in (0, 1, 3, 4)]
    assert torch.equal(cache.key_cache[:, others], keys[:, others])
    assert torch.equal(cache.value_cache[:, others], values[:, others])


def test_decode_rejects_mismatched_data_and_bad_block_ids():
    cache = _random_cache()
    data = encode_blocks(cache, BLOCK_IDS, KvCodec.INT8)
    with pytest.raises(ValueError, match="int8 encoding of 3 blocks must be 1-D uint8"):
        decode_blocks(data, cache, BLOCK_IDS[:3], KvCodec.INT8)
    with pytest.raises(ValueError, match="bytes"):
        decode_blocks(data[:-1], cache, BLOCK_IDS, KvCodec.INT8)
    with pytest.raises(ValueError, match="bytes"):
        decode_blocks(data, cache, BLOCK_IDS, KvCodec.INT4)  # same blocks, other codec: other size
    with pytest.raises(ValueError, match="uint8"):
        decode_blocks(data.view(torch.int8), cache, BLOCK_IDS, KvCodec.INT8)
    with pytest.raises(ValueError, match="distinct"):
        encode_blocks(cache, [1, 1], KvCodec.FULL)
    with pytest.raises(ValueError, match=r"\[0, 12\)"):
        decode_blocks(data, cache, [0, 1, 2, 12], KvCodec.INT8)


def test_encode_into_a_slot_of_a_shared_buffer():
    """A host-tier slot: the encoding written in place equals a fresh one; a bad slot is refused."""
    cache = _random_cache(torch.bfloat16)
    for codec in KvCodec:
        fresh = encode_blocks(cache, BLOCK_IDS, codec)
        region = torch.zeros(fresh.numel() + 8, dtype=torch.uint8)
        slot = region[4 : 4 + fresh.numel()]
        assert encode_blocks(cache, BLOCK_IDS, codec, out=slot).data_ptr() == slot.data_ptr()
        assert torch.equal(slot, fresh) and not region[:4].any() and not region[-4:].any()
        with pytest.raises(ValueError, match="multiple of 4"):
            encode_blocks(cache, BLOCK_IDS, codec, out=region[2 : 2 + fresh.numel()])
        with pytest.raises(ValueError, match="bytes"):
            encode_blocks(cache, BLOCK_IDS, codec, out=region[4:])


def test_decode_accepts_bytes_at_an_unaligned_offset():
    """A host-tier slot may start anywhere in a shared buffer; float views need 4-byte alignment."""
    cache = _random_cache()
    expected = _random_cache()
    _round_trip(expected, KvCodec.INT4)
    data = encode_blocks(cache, BLOCK_IDS, KvCodec.INT4)
    region = torch.zeros(data.numel() + 3, dtype=torch.uint8)
    region[3:] = data
    decode_blocks(region[3:], cache, BLOCK_IDS, KvCodec.INT4)
    assert torch.equal(cache.key_cache, expected.key_cache) and torch.equal(cache.value_cache, expected.value_cache)


@pytest.mark.parametrize(
    "codec, outlier_channels, bound",
    # Measured 1.04% / 2.56% (int8) and 10.6% / 18.1% (int4); the KV's own errors are 0.77% / 1.75%
    # and 7.8% / 10.1%: attention amplifies them ~1.4x here (peaked softmax). Outlier channels in K
    # make the per-head int8 scale and the first int4 group's scale 6x coarser for the other channels.
    [(KvCodec.INT8, 0, 0.015), (KvCodec.INT8, 4, 0.035), (KvCodec.INT4, 0, 0.13), (KvCodec.INT4, 4, 0.22)],
)
def test_attention_output_error_after_round_trip(codec, outlier_channels, bound):
    """GQA 8 query heads on 2 KV heads, a decode row and a 9-token prefill chunk, every layer,
    against the float32 cache."""
    cache = _random_cache(seed=5, outlier_channels=outlier_channels)
    tables = [torch.tensor(BLOCK_IDS), torch.tensor([3, 0, 11])]  # 60 and 37 positions of context
    metadata = make_metadata(torch.zeros(10, dtype=torch.long), [0, 1, 10], [60, 37], [t.tolist() for t in tables])
    query = torch.randn(10, 8, SHAPE.head_dim, generator=torch.Generator().manual_seed(6))

    def attend_all_layers():
        return torch.stack(
            [
                paged_attention_reference(query, keys, values, metadata, SHAPE.head_dim**-0.5)
                for keys, values in zip(cache.key_cache, cache.value_cache)
            ]
        )

    exact = attend_all_layers()
    for table in tables:
        _round_trip(cache, codec, table.tolist(), table.tolist())
    approximate = attend_all_layers()
    error = kv_quant.relative_error(approximate, exact)
    assert 0 < error <= bound


# -- greedy generation on the default model after a swap round trip --------------------------------

NUM_OUTPUT_TOKENS, SWAP_AFTER_TOKENS = 48, 16
PROMPT_LENGTHS = (7, 23, 41, 64, 90, 130)  # tokens; partial last blocks of every fill


def _core():
    return make_core(num_blocks=128, block_size=16, token_budget=512, max_num_seqs=8)


@pytest.fixture(scope="module")
def prompts_and_reference():
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 32000, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]
    return prompts, generate(_core(), prompts, NUM_OUTPUT_TOKENS)


@pytest.mark.parametrize(
    "codec, floor",
    # Measured on this model (6 prompts, 32 compared tokens each, 192 in all): full 100%, int8 100%
    # (192/192), int4 65% (125/192; first divergence 0-26 tokens after the swap in 5 of 6 prompts).
    # On 16 ShareGPT prompts (alise bench kv-codec) int8 kept 96.1% (2 of 16 prompts flipped a
    # near-tie, 7 and 16 tokens after the swap), int4 73.6%. Floors: full must be exact; int8 0.85
    # (one early flip in one of these 6 prompts costs up to 17%); int4 0.4.
    [(KvCodec.FULL, 1.0), (KvCodec.INT8, 0.85), (KvCodec.INT4, 0.4)],
)
def test_greedy_tokens_after_swap_round_trip_match_no_swap(prompts_and_reference, codec, floor):
    prompts, reference = prompts_and_reference
    agreement = measure_agreement(
        _core,
        prompts,
        codec,
        num_output_tokens=NUM_OUTPUT_TOKENS,
        swap_after_tokens=SWAP_AFTER_TOKENS,
        reference=reference,
    )
    print(
        f"{codec.value}: {agreement.num_identical_tokens}/{agreement.num_compared_tokens} identical tokens after "
        f"the swap ({agreement.identical_share:.1%}), first divergence {agreement.first_divergence}"
    )
    assert agreement.num_compared_tokens == len(prompts) * (NUM_OUTPUT_TOKENS - SWAP_AFTER_TOKENS)
    assert agreement.identical_share >= floor


def test_greedy_tokens_after_losing_the_kv_diverge(prompts_and_reference, monkeypatch):
    """The agreement test can fail: zeroed KV (a decode that wrote nothing) changes the output."""
    prompts, reference = prompts_and_reference
    monkeypatch.setattr(swap_agreement, "decode_blocks", lambda *args: None)
    broken = generate(_core(), prompts, NUM_OUTPUT_TOKENS, SwapRoundTrip(KvCodec.FULL, SWAP_AFTER_TOKENS))
    for tokens, expected in zip(broken, reference):
        assert tokens[:SWAP_AFTER_TOKENS] == expected[:SWAP_AFTER_TOKENS]
        assert tokens[SWAP_AFTER_TOKENS:] != expected[SWAP_AFTER_TOKENS:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("codec", list(KvCodec))
def test_cuda_cache_round_trip_matches_cpu(codec):
    """Encoding quantizes on the GPU; the bytes decode the same on either device."""
    cpu_cache = _random_cache(torch.bfloat16, outlier_channels=2)
    cuda_cache = _random_cache(torch.bfloat16, outlier_channels=2, device=torch.device("cuda"))
    data = encode_blocks(cuda_cache, BLOCK_IDS, codec)
    assert data.device.type == "cpu" and data.numel() == encoded_size_bytes(SHAPE, torch.bfloat16, 4, codec)
    _round_trip(cpu_cache, codec)
    decode_blocks(data, cuda_cache, BLOCK_IDS, codec)
    torch.testing.assert_close(cuda_cache.key_cache.cpu(), cpu_cache.key_cache, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(cuda_cache.value_cache.cpu(), cpu_cache.value_cache, atol=1e-2, rtol=1e-2)
    if codec is KvCodec.FULL:
        assert torch.equal(cuda_cache.key_cache.cpu(), cpu_cache.key_cache)
