"""The two measurements of `alise bench stack`, independent of gRPC (callers pass stream makers).

- throughput: `concurrency` client streams, each running `requests_per_stream` requests back to
  back; aggregate tokens/s = all tokens received / wall time of the whole round.
- overhead: the same request sent N times through the gateway and N times straight to the engine,
  interleaved (G,E,E,G,G,E,...) so that drift of a noisy machine hits both sides alike; the
  gateway's added latency is reported as differences and ratios of the p50 and p90.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from typing import Awaitable, Callable, Sequence

from services.cli.streams import StreamTiming

# Given max_tokens, runs one request to completion and returns its client-side timing.
StreamMaker = Callable[[int], Awaitable[StreamTiming]]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method); nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_ms(values_s: Sequence[float]) -> dict[str, float]:
    """mean, p50, p90 and p99 in milliseconds of durations given in seconds."""
    values_ms = [value * 1e3 for value in values_s]
    return {
        "mean_ms": statistics.fmean(values_ms) if values_ms else math.nan,
        "p50_ms": percentile(values_ms, 50),
        "p90_ms": percentile(values_ms, 90),
        "p99_ms": percentile(values_ms, 99),
    }


async def measure_throughput(
    make_stream: StreamMaker, *, concurrency: int, requests_per_stream: int, max_tokens: int
) -> dict[str, object]:
    """Aggregate generation throughput of `concurrency` concurrent client streams."""

    async def one_stream() -> list[StreamTiming]:
        return [await make_stream(max_tokens) for _ in range(requests_per_stream)]

    began_s = time.perf_counter()
    per_stream = await asyncio.gather(*(one_stream() for _ in range(concurrency)))
    wall_s = time.perf_counter() - began_s
    timings = [timing for stream in per_stream for timing in stream]
    num_tokens = sum(timing.num_tokens for timing in timings)
    ttfts_s = [t.time_to_first_token_s for t in timings if t.time_to_first_token_s is not None]
    decode_rates = [rate for t in timings if (rate := t.decode_tokens_per_s) is not None]
    return {
        "concurrency": concurrency,
        "num_requests": len(timings),
        "max_tokens": max_tokens,
        "num_tokens": num_tokens,
        "num_requests_short": sum(1 for t in timings if t.num_tokens < max_tokens),
        "wall_s": wall_s,
        "tokens_per_s": num_tokens / wall_s,
        "per_request_decode_tokens_per_s_mean": statistics.fmean(decode_rates) if decode_rates else math.nan,
        "ttft": summarize_ms(ttfts_s),
        "end_to_end": summarize_ms([t.end_to_end_s for t in timings]),
    }


def _difference(gateway: dict[str, float], engine: dict[str, float]) -> dict[str, float]:
    return {
        "gateway": gateway,
        "engine": engine,
        "added_p50_ms": gateway["p50_ms"] - engine["p50_ms"],
        "added_p90_ms": gateway["p90_ms"] - engine["p90_ms"],
        "ratio_p50": gateway["p50_ms"] / engine["p50_ms"] if engine["p50_ms"] > 0 else math.nan,
        "ratio_p90": gateway["p90_ms"] / engine["p90_ms"] if engine["p90_ms"] > 0 else math.nan,
    }


async def measure_overhead(
    via_gateway: StreamMaker, direct_to_engine: StreamMaker, *, num_requests: int, max_tokens: int, num_warmup: int
) -> dict[str, object]:
    """Latency the gateway adds per request over calling the engine directly (sequential calls)."""
    for _ in range(num_warmup):
        await via_gateway(max_tokens)
        await direct_to_engine(max_tokens)
    gateway: list[StreamTiming] = []
    engine: list[StreamTiming] = []
    for index in range(num_requests):
        order = ((via_gateway, gateway), (direct_to_engine, engine))
        for make_stream, sink in order if index % 2 == 0 else reversed(order):
            sink.append(await make_stream(max_tokens))
    return {
        "num_requests": num_requests,
        "max_tokens": max_tokens,
        "end_to_end": _difference(
            summarize_ms([t.end_to_end_s for t in gateway]), summarize_ms([t.end_to_end_s for t in engine])
        ),
        "ttft": _difference(
            summarize_ms([t.time_to_first_token_s for t in gateway if t.time_to_first_token_s is not None]),
            summarize_ms([t.time_to_first_token_s for t in engine if t.time_to_first_token_s is not None]),
        ),
    }
