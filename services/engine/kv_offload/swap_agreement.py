"""How much a swap round trip changes greedy generation: the end-to-end figure of a KV codec.

Each prompt is generated greedily twice on fresh engine cores: once untouched (the reference), once
with a swap round trip after `swap_after_tokens` output tokens: the request's blocks are encoded with
the codec, zeroed (so nothing of the old KV survives except through the encoding) and decoded back
before the next step. Output i >= swap_after_tokens is the first computed from the restored KV:

    outputs:   o0 .. o(k-1) | ok ... o(N-1)       k = swap_after_tokens, N = num_output_tokens
               identical    | compared: share of positions equal to the reference, first divergence

Both runs batch the same requests in the same steps, so FULL must agree on every token (batching
and float order are identical); a lossy codec's share measures what its error does to decisions.
Used by tests/test_engine_kv_codec.py and `alise bench kv-codec`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from services.engine.engine_core import EngineCore
from services.engine.kv_offload.kv_codec import KvCodec, decode_blocks, encode_blocks
from services.engine.request import Request, SamplingOptions

MAX_STEPS = 10_000  # a generation that has not finished after this many steps is a bug


@dataclass(frozen=True)
class SwapAgreement:
    """Greedy outputs with one swap round trip vs without, over a set of prompts."""

    codec: str  # KvCodec value
    num_compared_tokens: int  # outputs at positions >= swap_after_tokens, all prompts
    num_identical_tokens: int  # of those, equal to the reference at the same position
    identical_share: float  # num_identical_tokens / num_compared_tokens
    first_divergence: list[int | None]  # per prompt, first differing output position; None = none


@dataclass(frozen=True)
class SwapRoundTrip:
    """When and how generate() swaps each request out and back in."""

    codec: KvCodec  # encoding of the round trip
    after_tokens: int  # right after the step that produced this many output tokens
    int4_group_size: int | None = None  # None = kv_codec's default


def _greedy(max_tokens: int) -> SamplingOptions:
    return SamplingOptions(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True)


def _round_trip(core: EngineCore, request_id: str, swap: SwapRoundTrip) -> None:
    """Encodes the request's blocks, zeroes them, decodes them back in place."""
    block_ids = core.scheduler.kv.block_table(request_id)
    cache = core.runner.cache
    data = encode_blocks(cache, block_ids, swap.codec, swap.int4_group_size)
    cache.key_cache[:, block_ids] = 0
    cache.value_cache[:, block_ids] = 0
    decode_blocks(data, cache, block_ids, swap.codec, swap.int4_group_size)


def generate(
    core: EngineCore,
    prompts: list[list[int]],
    num_output_tokens: int,
    swap: SwapRoundTrip | None = None,
) -> list[list[int]]:
    """Greedy outputs per prompt, all requests added at once; with one swap round trip each if given."""
    request_ids = [f"prompt-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(request_ids, prompts):
        options = _greedy(num_output_tokens)
        core.add(Request(request_id, list(prompt), options, time.monotonic(), float(num_output_tokens)))
    outputs: dict[str, list[int]] = {request_id: [] for request_id in request_ids}
    swapped: set[str] = set()
    for _ in range(MAX_STEPS):
        if not core.scheduler.has_work:
            if swap and swapped != set(request_ids):
                raise RuntimeError(f"only {sorted(swapped)} were swapped; every request must be")
            return [outputs[request_id] for request_id in request_ids]
        for result in core.step():
            outputs[result.request_id].extend(result.new_token_ids)
            if swap and len(outputs[result.request_id]) == swap.after_tokens and result.finish_reason is None:
                _round_trip(core, result.request_id, swap)
                swapped.add(result.request_id)
    raise RuntimeError(f"generation did not finish in {MAX_STEPS} steps")


def measure_agreement(
    make_core: Callable[[], EngineCore],
    prompts: list[list[int]],
    codec: KvCodec,
    *,
    num_output_tokens: int,
    swap_after_tokens: int,
    int4_group_size: int | None = None,
    reference: list[list[int]] | None = None,
) -> SwapAgreement:
    """Greedy outputs after one round trip through `codec` vs the untouched reference (computed
    on its own fresh core when not given)."""
    if not 0 < swap_after_tokens < num_output_tokens:
        raise ValueError(f"swap_after_tokens must be in (0, {num_output_tokens}), got {swap_after_tokens}")
    if reference is None:
        reference = generate(make_core(), prompts, num_output_tokens)
    swap = SwapRoundTrip(codec, swap_after_tokens, int4_group_size)
    swapped = generate(make_core(), prompts, num_output_tokens, swap)
    compared = identical = 0
    first_divergence: list[int | None] = []
    for expected, actual in zip(reference, swapped):
        pairs = list(zip(expected[swap_after_tokens:], actual[swap_after_tokens:]))
        compared += len(pairs)
        identical += sum(a == b for a, b in pairs)
        differing = [swap_after_tokens + i for i, (a, b) in enumerate(pairs) if a != b]
        first_divergence.append(differing[0] if differing else None)
    return SwapAgreement(codec.value, compared, identical, identical / max(1, compared), first_divergence)
