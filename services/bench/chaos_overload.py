"""Overload: a burst far above capacity, and requests whose deadline cannot be met.

`burst` fires N streams at once on one channel (what issue 21 found: 3,000 at once ended 717
CANCELLED with no message). Every stream must end OK or RESOURCE_EXHAUSTED with a message; the
rejections must come fast (they cost the server nothing), and the admitted ones finish.

`deadline_burst` first loads the engine with long streams, then sends short-deadline requests:
the engine's deadline admission must refuse them at once ("deadline cannot be met") instead of
letting them time out after their deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.bench.chaos_contention import nearest_rank_percentile
from services.bench.chaos_load import StreamOutcome, count_codes, make_prompt, run_stream
from services.common.contracts import common_pb2, gateway_service_pb2
from services.gateway.engine_saturation import REFUSED_BEFORE_WORK


@dataclass(frozen=True)
class BurstResult:
    """What N simultaneous streams got (JSON-ready)."""

    num_requests: int
    codes: dict[str, int]  # final status -> count
    rejection_p50_s: float  # RESOURCE_EXHAUSTED: call -> status
    rejection_p99_s: float
    admitted_ttft_p50_s: float  # OK streams: call -> first token
    admitted_ttft_p99_s: float
    admitted_p99_s: float  # OK streams: call -> end
    sample_rejection: str  # one RESOURCE_EXHAUSTED message, verbatim
    wall_s: float
    num_refused_by_gateway: int = 0  # of the rejections, those the gateway made before any work (check_room)
    refusal_reasons: dict[str, int] = field(default_factory=dict)  # rejections by alise-refusal-reason
    # OK streams, as the engine measured them (services/bench/chaos_contention.py): arrival at the
    # engine -> first scheduled step / first token. The engine TTFT is what admission controls; the
    # client's TTFT minus it (per stream) is the way through the gateway and both event loops.
    admitted_engine_queue_p99_s: float = 0.0
    admitted_engine_ttft_p50_s: float = 0.0
    admitted_engine_ttft_p99_s: float = 0.0
    admitted_outside_engine_p50_s: float = 0.0
    admitted_outside_engine_p99_s: float = 0.0
    # Where the engine's part goes: the queue (arrival -> first scheduled step: the wait for a place)
    # and the first step itself (first scheduled step -> first token: its prefill, in a batch that at
    # 20x is always full). p90s too: a p99 of ~150 admitted requests is the second slowest.
    admitted_ttft_p90_s: float = 0.0
    admitted_engine_queue_p50_s: float = 0.0
    admitted_engine_queue_p90_s: float = 0.0
    admitted_first_step_p50_s: float = 0.0
    admitted_first_step_p90_s: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def summarize_burst(outcomes: list[StreamOutcome], wall_s: float) -> BurstResult:
    rejected = [o for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    admitted = [o for o in outcomes if o.code == "OK"]
    ttfts = [o.first_token_s - o.started_s for o in admitted if o.first_token_s is not None]
    timed = [o for o in admitted if o.first_token_s is not None and o.engine_ttft_s is not None]
    engine_ttfts = [o.engine_ttft_s for o in timed]
    outside = [o.first_token_s - o.started_s - o.engine_ttft_s for o in timed]
    queues = [o.engine_queue_s for o in timed]
    first_steps = [o.engine_ttft_s - o.engine_queue_s for o in timed]
    return BurstResult(
        num_requests=len(outcomes),
        codes=count_codes(outcomes),
        rejection_p50_s=nearest_rank_percentile([o.duration_s for o in rejected], 0.5),
        rejection_p99_s=nearest_rank_percentile([o.duration_s for o in rejected], 0.99),
        admitted_ttft_p50_s=nearest_rank_percentile(ttfts, 0.5),
        admitted_ttft_p99_s=nearest_rank_percentile(ttfts, 0.99),
        admitted_p99_s=nearest_rank_percentile([o.duration_s for o in admitted], 0.99),
        sample_rejection=rejected[0].details if rejected else "",
        wall_s=wall_s,
        num_refused_by_gateway=sum(o.details.startswith(REFUSED_BEFORE_WORK) for o in rejected),
        refusal_reasons=_count_reasons(rejected),
        admitted_engine_queue_p99_s=nearest_rank_percentile(queues, 0.99),
        admitted_engine_ttft_p50_s=nearest_rank_percentile(engine_ttfts, 0.5),
        admitted_engine_ttft_p99_s=nearest_rank_percentile(engine_ttfts, 0.99),
        admitted_outside_engine_p50_s=nearest_rank_percentile(outside, 0.5),
        admitted_outside_engine_p99_s=nearest_rank_percentile(outside, 0.99),
        admitted_ttft_p90_s=nearest_rank_percentile(ttfts, 0.9),
        admitted_engine_queue_p50_s=nearest_rank_percentile(queues, 0.5),
        admitted_engine_queue_p90_s=nearest_rank_percentile(queues, 0.9),
        admitted_first_step_p50_s=nearest_rank_percentile(first_steps, 0.5),
        admitted_first_step_p90_s=nearest_rank_percentile(first_steps, 0.9),
    )


def _count_reasons(rejected: list[StreamOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in rejected:
        reason = outcome.refusal_reason or "-"
        counts[reason] = counts.get(reason, 0) + 1
    return counts


async def burst(stub, num_requests: int, *, max_tokens: int, timeout_s: float, seed: int = 0) -> BurstResult:
    """num_requests streams started together; waits for all of them."""
    rng = random.Random(seed)
    began_s = time.monotonic()
    outcomes = [
        StreamOutcome(index, make_prompt(rng, 12), max_tokens, rng.getrandbits(32), time.monotonic())
        for index in range(num_requests)
    ]
    await asyncio.gather(*(run_stream(stub, outcome, timeout_s=timeout_s) for outcome in outcomes))
    return summarize_burst(outcomes, time.monotonic() - began_s)


async def paced_overload(
    stub, *, rate_per_s: float, duration_s: float, max_tokens: int, timeout_s: float, seed: int = 0
) -> BurstResult:
    """Open-loop arrivals at a fixed rate (a multiple of capacity) for duration_s; waits for all."""
    began_s = time.monotonic()
    outcomes = await paced_outcomes(
        stub, rate_per_s=rate_per_s, duration_s=duration_s, max_tokens=max_tokens, timeout_s=timeout_s, seed=seed
    )
    return summarize_burst(outcomes, time.monotonic() - began_s)


async def paced_outcomes(
    stub, *, rate_per_s: float, duration_s: float, max_tokens: int, timeout_s: float, seed: int = 0
) -> list[StreamOutcome]:
    """paced_overload's streams, each as the client saw it (for a split of each one's TTFT)."""
    rng = random.Random(seed)
    began_s = time.monotonic()
    tasks = []
    for index in range(int(rate_per_s * duration_s)):
        delay_s = began_s + index / rate_per_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        outcome = StreamOutcome(index, make_prompt(rng, 12), max_tokens, rng.getrandbits(32), time.monotonic())
        tasks.append(asyncio.create_task(run_stream(stub, outcome, timeout_s=timeout_s)))
    return list(await asyncio.gather(*tasks))


async def health_burst(channel: grpc.aio.Channel, num_calls: int) -> dict[str, int]:
    """num_calls Health.Check at once on one channel: status -> count (issue 21: ~2,000 of 5,000 CANCELLED)."""
    stub = health_pb2_grpc.HealthStub(channel)

    async def one() -> str:
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=60.0)
            return "OK"
        except grpc.aio.AioRpcError as error:
            return error.code().name

    codes: dict[str, int] = {}
    for code in await asyncio.gather(*(one() for _ in range(num_calls))):
        codes[code] = codes.get(code, 0) + 1
    return codes


@dataclass(frozen=True)
class DeadlineResult:
    """Short-deadline requests sent while the engine is busy (JSON-ready)."""

    num_background: int  # long streams keeping the engine busy
    num_probes: int  # short-deadline requests
    probe_deadline_s: float
    probe_codes: dict[str, int]
    probe_answer_p99_s: float  # call -> status, all probes
    sample_rejection: str

    def to_json(self) -> dict:
        return asdict(self)


async def deadline_burst(
    stub, *, num_background: int, background_tokens: int, num_probes: int, probe_tokens: int, probe_deadline_s: float
) -> DeadlineResult:
    """Busy engine, then probes whose predicted completion exceeds their deadline."""
    rng = random.Random(1)
    background = [
        StreamOutcome(i, make_prompt(rng, 12), background_tokens, i, time.monotonic()) for i in range(num_background)
    ]
    tasks = [asyncio.create_task(run_stream(stub, o, timeout_s=300.0)) for o in background]
    await _until_generating(background)
    probes = []
    for index in range(num_probes):
        outcome = StreamOutcome(index, make_prompt(rng, 12), probe_tokens, index, time.monotonic())
        request = gateway_service_pb2.GenerateRequest(
            prompt_text=outcome.prompt,
            expected_output_tokens=probe_tokens,
            sampling=common_pb2.SamplingParams(max_tokens=probe_tokens, ignore_eos=True, seed=index),
        )
        probes.append(_probe(stub, request, outcome, probe_deadline_s))
    probe_outcomes = await asyncio.gather(*probes)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rejected = [o for o in probe_outcomes if o.code == "RESOURCE_EXHAUSTED"]
    return DeadlineResult(
        num_background=num_background,
        num_probes=num_probes,
        probe_deadline_s=probe_deadline_s,
        probe_codes=count_codes(probe_outcomes),
        probe_answer_p99_s=nearest_rank_percentile([o.duration_s for o in probe_outcomes], 0.99),
        sample_rejection=rejected[0].details if rejected else "",
    )


async def _until_generating(outcomes: list[StreamOutcome], timeout_s: float = 60.0) -> None:
    began_s = time.monotonic()
    while sum(o.first_token_s is not None for o in outcomes) < len(outcomes) // 2:
        if time.monotonic() - began_s > timeout_s:
            raise TimeoutError("background streams did not start")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the engine's queue profile has measured decode steps


async def _probe(stub, request, outcome: StreamOutcome, deadline_s: float) -> StreamOutcome:
    outcome.started_s = time.monotonic()
    try:
        async for message in stub.Generate(request, timeout=deadline_s):
            outcome.token_ids.extend(message.token_ids)
    except grpc.aio.AioRpcError as error:
        outcome.code, outcome.details = error.code().name, error.details() or ""
    outcome.ended_s = time.monotonic()
    return outcome
