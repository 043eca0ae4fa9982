"""Soak: many concurrent streams with bursts for a while, then every stream replayed and compared.

    RSS of every service sampled every `rss_every_s` (services/bench/soak_rss.py) while
    `concurrency` streams are kept in flight + a burst of `burst_size` more every `burst_every_s`
    -> stop -> replay every finished stream with the same prompt, max_tokens and seed -> compare
    token ids exactly -> every block and slot free? ledger consistent? RSS growth after warm-up?

A stream's draws depend only on its seed and token position (services/engine/sampler.py), and with
ignore_eos its length is max_tokens: a stream of another length lost or duplicated tokens. A replay
of the right length whose tokens differ from some position on is a different sample: a reordered
or corrupted token, or logits that moved in their last bits (measured on CPU: the engine's logits
are not batch-invariant; greedy replays of the random tiny model, whose logits are nearly flat,
differ at once, sampled ones at temperature 0.8 in ~0.3% of streams, and in 0 of 489 without
preemption), so the figure is reported as it is.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass

from services.bench.chaos_aborts import _until_free
from services.bench.chaos_load import (
    ClosedLoopLoad,
    LoadShape,
    StreamOutcome,
    count_codes,
    count_refusals,
    failure_samples,
    run_stream,
)
from services.bench.chaos_stack import ChaosStack
from services.bench.soak_rss import RssSampler

# The bench process itself: the load generator (it keeps every stream's tokens for the replay, so it
# grows by design) and, with an in-process gateway, the gateway.
BENCH_PROCESS = "bench-process"


@dataclass(frozen=True)
class SoakResult:
    """Figures of one soak (JSON-ready)."""

    duration_s: float  # load phase
    concurrency: int
    num_streams: int
    codes: dict[str, int]
    failures: dict[str, int]  # the streams not OK, by status and refusal reason (e.g. RESOURCE_EXHAUSTED/QUEUE_FULL)
    sample_failures: list[str]  # the first few distinct failure messages, verbatim
    failure_samples: dict[str, list[dict]]  # failures key -> the first few such streams (message, timing, tokens)
    num_tokens: int  # tokens received, all streams
    num_replayed: int
    num_mismatched: int  # replays whose tokens differ from the original
    num_wrong_length: int  # streams (original or replay) with a token count != max_tokens: lost or duplicated tokens
    mismatches: list[dict]  # the first few: index, first differing position, lengths, preemptions seen
    engine_blocks_used_after: dict[str, int]
    host_blocks_used_after: int
    ledger_consistent: bool
    rss_growth: dict[str, float]  # service -> (end RSS / start RSS) - 1, over the load phase
    rss_after_warmup: dict[str, float]  # service -> (end RSS / RSS at the warm-up mark) - 1
    rss_slope_per_hour: dict[str, float]  # service -> fitted growth after warm-up, fraction per hour
    rss_warmup_fraction: float  # the warm-up mark, as a fraction of the load phase
    rss: dict[str, dict]  # service -> every RssGrowth figure (bytes: start, warm-up, end, peak)
    rss_samples: dict[str, dict[str, list[float]]]  # service -> t_s, rss_mib: every sample
    num_swapped_out: int
    num_preemptions: int

    def to_json(self) -> dict:
        return asdict(self)


def _first_difference(original: list[int], replay: list[int]) -> int:
    for position, (a, b) in enumerate(zip(original, replay, strict=False)):
        if a != b:
            return position
    return min(len(original), len(replay))


async def _bursts(stub, load: ClosedLoopLoad, shape: LoadShape, every_s: float, size: int, stop: asyncio.Event) -> None:
    tasks: list[asyncio.Task] = []
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            tasks += [
                asyncio.create_task(run_stream(stub, load.next_outcome(), timeout_s=shape.timeout_s))
                for _ in range(size)
            ]
    await asyncio.gather(*tasks)


async def replay(
    stub, outcomes: list[StreamOutcome], concurrency: int, timeout_s: float
) -> list[tuple[StreamOutcome, StreamOutcome]]:
    """Each finished stream again, same prompt / max_tokens / seed: (original, replay) pairs."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(original: StreamOutcome) -> tuple[StreamOutcome, StreamOutcome]:
        async with semaphore:
            again = StreamOutcome(original.index, original.prompt, original.max_tokens, original.seed, time.monotonic())
            return original, await run_stream(stub, again, timeout_s=timeout_s)

    return list(await asyncio.gather(*(one(o) for o in outcomes if o.code == "OK")))


async def soak(
    stack: ChaosStack,
    *,
    duration_s: float,
    shape: LoadShape,
    burst_every_s: float,
    burst_size: int,
    seed: int = 0,
    rss_every_s: float = 10.0,
    warmup_fraction: float = 0.1,
) -> SoakResult:
    stub = stack.gateway_stub()
    pids = {name: child.pid for name, child in stack.children.items() if child.returncode is None}
    sampler = RssSampler({**pids, BENCH_PROCESS: os.getpid()}, rss_every_s).start()
    before = {name: await stack.engine_stats(name) for name in stack.engine_names}
    began_s = time.monotonic()
    load = ClosedLoopLoad(stub, shape, seed).start()
    stop = asyncio.Event()
    bursts = asyncio.create_task(_bursts(stub, load, shape, burst_every_s, burst_size, stop))
    await asyncio.sleep(duration_s)
    stop.set()
    outcomes = await load.stop()
    await bursts
    await sampler.stop()
    rss = sampler.growth(warmup_fraction)
    after = {name: await stack.engine_stats(name) for name in stack.engine_names}
    pairs = await replay(stub, outcomes, shape.concurrency, shape.timeout_s)
    mismatched = [(o, r) for o, r in pairs if o.token_ids != r.token_ids or r.code != "OK"]
    engine_blocks, host_blocks, consistent = await _until_free(stack, timeout_s=30.0)
    details = [
        {
            "index": o.index,
            "first_difference": _first_difference(o.token_ids, r.token_ids),
            "num_tokens": len(o.token_ids),
            "num_replay_tokens": len(r.token_ids),
            "replay_code": r.code,
            "max_tokens": o.max_tokens,
            "prompt_words": len(o.prompt.split()),
        }
        for o, r in mismatched[:5]
    ]
    return SoakResult(
        duration_s=duration_s,
        concurrency=shape.concurrency,
        num_streams=len(outcomes),
        codes=count_codes(outcomes),
        failures=count_refusals(outcomes),
        sample_failures=list(dict.fromkeys(o.details for o in outcomes if o.code != "OK"))[:5],
        failure_samples=failure_samples(outcomes, began_s),
        num_tokens=sum(len(o.token_ids) for o in outcomes),
        num_replayed=len(pairs),
        num_mismatched=len(mismatched),
        num_wrong_length=sum(len(o.token_ids) != o.max_tokens or len(r.token_ids) != r.max_tokens for o, r in pairs),
        mismatches=details,
        engine_blocks_used_after=engine_blocks,
        host_blocks_used_after=host_blocks,
        ledger_consistent=consistent,
        rss_growth={name: growth.start_to_end for name, growth in rss.items()},
        rss_after_warmup={name: growth.after_warmup for name, growth in rss.items()},
        rss_slope_per_hour={name: growth.slope_per_hour for name, growth in rss.items()},
        rss_warmup_fraction=warmup_fraction,
        rss={name: growth.to_json() for name, growth in rss.items()},
        rss_samples=sampler.series_mib(),
        num_swapped_out=sum(after[n].num_swapped_out - before[n].num_swapped_out for n in after),
        num_preemptions=sum(after[n].num_preemptions - before[n].num_preemptions for n in after),
    )
