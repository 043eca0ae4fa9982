"""Figures of the KV codecs on one cache: speed, size and error per codec (for `alise bench kv-codec`).

Encoding reads the source blocks; decoding writes into separate target blocks of the same cache, so
the source stays exact across repeats (decoding lossy bytes over the source would quantize already
quantized values). Throughput counts source KV bytes (the FULL size of the blocks in the cache
dtype) per second, for encoding and decoding alike, so the codecs compare on the work they serve;
per wall second, and per thread-CPU second, which other processes on a shared machine inflate less
(it counts all the work only with one torch thread, the benchmark's default).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from services.engine.engine_core import EngineCore
from services.engine.kv_cache import PagedKvCache
from services.engine.kv_offload.kv_codec import (
    KvCodec,
    decode_blocks,
    encode_blocks,
    encoded_size_bytes,
    measure_codec_errors,
)
from services.engine.request import Request, SamplingOptions

INT4_GROUP_SIZES = (16, 32, 64)  # int4 group sizes whose error is reported (default: kv_codec.py)
BYTES_PER_GB = 1e9


@dataclass(frozen=True)
class CodecFigures:
    """One codec on one source."""

    codec: str  # KvCodec value
    encoded_bytes: int  # size of the encoding of all source blocks
    size_ratio: float  # encoded_bytes / FULL size
    encode_ms: float  # median wall time of encode_blocks over all source blocks, ms
    decode_ms: float  # median wall time of decode_blocks into the target blocks, ms
    encode_gb_s: float  # source KV bytes / encode wall time, 1e9 bytes per second
    decode_gb_s: float  # source KV bytes / decode wall time, 1e9 bytes per second
    encode_cpu_gb_s: float  # the same per thread-CPU second (steadier on a shared machine; 1 thread)
    decode_cpu_gb_s: float  # the same per thread-CPU second
    relative_error: float  # ||x' - x|| / ||x|| over all source K and V (0 for FULL)


@dataclass(frozen=True)
class SourceFigures:
    """All codecs on one source of KV."""

    source: str  # what the KV is
    dtype: str  # cache dtype
    num_layers: int  # cache geometry ...
    num_kv_heads: int
    head_dim: int
    block_size: int  # ... token positions per block
    num_blocks: int  # source blocks encoded per call
    source_bytes: int  # FULL size of those blocks
    int4_group_size: int  # group size of the INT4 row
    codecs: list[CodecFigures]  # one per KvCodec
    int4_error_by_group_size: dict[int, float]  # relative error of int4 per group size


def _median_s(action, num_repeats: int) -> tuple[float, float]:
    """Median wall and thread-CPU seconds of action() (after one untimed warm-up call: first-touch
    page faults and lazy initialization are not the codec's cost)."""
    action()
    wall, cpu = [], []
    for _ in range(num_repeats):
        started, started_cpu = time.perf_counter(), time.thread_time()
        action()
        wall.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
    return statistics.median(wall), statistics.median(cpu)


def measure_codec(
    cache: PagedKvCache, source_ids: list[int], target_ids: list[int], codec: KvCodec, group_size: int, num_repeats: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (wall, thread-CPU) seconds of encoding the source blocks and of decoding into the targets."""
    data = encode_blocks(cache, source_ids, codec, group_size)
    encode_s = _median_s(lambda: encode_blocks(cache, source_ids, codec, group_size), num_repeats)
    decode_s = _median_s(lambda: decode_blocks(data, cache, target_ids, codec, group_size), num_repeats)
    return encode_s, decode_s


def measure_source(
    source: str, cache: PagedKvCache, source_ids: list[int], target_ids: list[int], group_size: int, num_repeats: int
) -> SourceFigures:
    """Every codec on the source blocks of `cache` (target_ids: as many spare blocks to decode into)."""
    if len(source_ids) != len(target_ids) or set(source_ids) & set(target_ids):
        raise ValueError("target_ids must be as many blocks as source_ids, disjoint from them")
    shape, dtype = cache.shape, cache.key_cache.dtype
    errors = measure_codec_errors(cache, source_ids, group_size)
    full_bytes = encoded_size_bytes(shape, dtype, len(source_ids), KvCodec.FULL)
    rows = []
    for codec in KvCodec:
        (encode_s, encode_cpu_s), (decode_s, decode_cpu_s) = measure_codec(
            cache, source_ids, target_ids, codec, group_size, num_repeats
        )
        size = encoded_size_bytes(shape, dtype, len(source_ids), codec, group_size)
        gb = full_bytes / BYTES_PER_GB
        rows.append(
            CodecFigures(
                codec.value,
                size,
                size / full_bytes,
                encode_s * 1e3,
                decode_s * 1e3,
                gb / encode_s,
                gb / decode_s,
                gb / encode_cpu_s,
                gb / decode_cpu_s,
                errors[codec],
            )
        )
    groups = [g for g in INT4_GROUP_SIZES if shape.head_dim % g == 0]
    by_group = {g: measure_codec_errors(cache, source_ids, g)[KvCodec.INT4] for g in groups}
    return SourceFigures(
        source,
        str(dtype).removeprefix("torch."),
        shape.num_layers,
        shape.num_kv_heads,
        shape.head_dim,
        shape.block_size,
        len(source_ids),
        full_bytes,
        group_size,
        rows,
        by_group,
    )


def prefill(core: EngineCore, prompts: list[list[int]]) -> list[int]:
    """Runs the prompts until each has its first output token; returns their blocks, request by request."""
    options = SamplingOptions(max_tokens=2, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True)
    request_ids = [f"prefill-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(request_ids, prompts):
        core.add(Request(request_id, list(prompt), options, time.monotonic(), 2.0))
    sampled: set[str] = set()
    while len(sampled) < len(prompts):
        if not core.scheduler.has_work:
            raise RuntimeError("requests finished before all were prefilled")
        sampled.update(result.request_id for result in core.step() if result.new_token_ids)
    return [block for request_id in request_ids for block in core.scheduler.kv.block_table(request_id)]


def random_cache(shape, dtype: torch.dtype, seed: int) -> PagedKvCache:
    """A cache of Gaussian K and V (unit variance)."""
    cache = PagedKvCache(shape, dtype, torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    for tensor in (cache.key_cache, cache.value_cache):
        tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return cache
