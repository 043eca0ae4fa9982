"""Client load for the fault, overload and soak runs: streams through the gateway, each one recorded.

Every stream's outcome keeps what a client saw (status code, its message, every token id, when it
started, got its first token and ended), so a run can say what each fault did to the requests in
flight and to the new ones, and a soak can replay every stream and compare tokens exactly.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import grpc

from services.common.contracts import common_pb2, gateway_service_pb2
from services.common.refusal import refusal_reason_of

PROMPT_WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly brew tea near old stone "
    "bridges and distant rivers carry small boats toward the sea under a pale morning sky"
).split()


@dataclass
class StreamOutcome:
    """One generation as the client saw it."""

    index: int  # position in the run (also seeds its prompt)
    prompt: str
    max_tokens: int
    seed: int
    started_s: float  # time.monotonic() at the call
    code: str = "OK"  # grpc.StatusCode name the stream ended with
    details: str = ""  # the status message
    token_ids: list[int] = field(default_factory=list)
    first_token_s: float | None = None  # time.monotonic() of the first token
    ended_s: float = 0.0
    finish_reason: int = 0  # common_pb2.FinishReason of the final message (0 when it failed)
    prediction_source: int = 0  # common_pb2.PredictionSource the gateway reported
    refusal_reason: str = ""  # the failure's alise-refusal-reason ("" when none: not a refusal, or unnamed)
    # The engine's own timings from the final message (None when the stream failed): arrival at the
    # engine -> first scheduled step / first token. Client TTFT minus these is the way there and back
    # (gateway, both event loops, the machine's CPU contention), which admission cannot change.
    engine_queue_s: float | None = None
    engine_ttft_s: float | None = None

    @property
    def duration_s(self) -> float:
        return self.ended_s - self.started_s


def make_prompt(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(PROMPT_WORDS) for _ in range(num_words))


def generate_request(
    prompt: str, max_tokens: int, seed: int, temperature: float = 0.8
) -> gateway_service_pb2.GenerateRequest:
    """ignore_eos, a fixed seed: the same request always yields the same tokens (the soak's replay)."""
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, ignore_eos=True)
    return gateway_service_pb2.GenerateRequest(prompt_text=prompt, sampling=sampling)


async def run_stream(stub, outcome: StreamOutcome, *, timeout_s: float, temperature: float = 0.8) -> StreamOutcome:
    """Runs one stream to its end and fills `outcome` (never raises for a gRPC status)."""
    request = generate_request(outcome.prompt, outcome.max_tokens, outcome.seed, temperature)
    outcome.started_s = time.monotonic()
    try:
        async for message in stub.Generate(request, timeout=timeout_s):
            if message.token_ids and outcome.first_token_s is None:
                outcome.first_token_s = time.monotonic()
            outcome.token_ids.extend(message.token_ids)
            if message.finish_reason:
                outcome.finish_reason = message.finish_reason
                outcome.prediction_source = message.prediction.source
                outcome.engine_queue_s = message.timings.queue_time_s
                outcome.engine_ttft_s = message.timings.time_to_first_token_s
    except grpc.aio.AioRpcError as error:
        outcome.code, outcome.details = error.code().name, error.details() or ""
        reason = refusal_reason_of(error.trailing_metadata())
        outcome.refusal_reason = "" if reason is None else reason.name
    outcome.ended_s = time.monotonic()
    return outcome


@dataclass(frozen=True)
class LoadShape:
    """Concurrent streams kept running, and their sizes."""

    concurrency: int  # streams in flight at once
    min_tokens: int = 8  # max_tokens drawn uniformly in [min_tokens, max_tokens]
    max_tokens: int = 48
    min_words: int = 4  # prompt length drawn in words
    max_words: int = 40
    timeout_s: float = 60.0  # each stream's deadline
    temperature: float = 0.8
    retry_pause_s: float = 0.0  # a worker whose stream failed waits this long before its next one


class ClosedLoopLoad:
    """Keeps `concurrency` streams in flight until `stop()`; every stream's outcome is kept."""

    def __init__(self, stub, shape: LoadShape, seed: int = 0) -> None:
        self._stub = stub
        self._shape = shape
        self._rng = random.Random(seed)
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self.outcomes: list[StreamOutcome] = []

    def start(self) -> "ClosedLoopLoad":
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self._shape.concurrency)]
        return self

    def next_outcome(self) -> StreamOutcome:
        shape = self._shape
        index = len(self.outcomes)
        outcome = StreamOutcome(
            index=index,
            prompt=make_prompt(self._rng, self._rng.randint(shape.min_words, shape.max_words)),
            max_tokens=self._rng.randint(shape.min_tokens, shape.max_tokens),
            seed=self._rng.getrandbits(32),
            started_s=time.monotonic(),
        )
        self.outcomes.append(outcome)
        return outcome

    async def _worker(self) -> None:
        while not self._stopping.is_set():
            outcome = self.next_outcome()
            await run_stream(self._stub, outcome, timeout_s=self._shape.timeout_s, temperature=self._shape.temperature)
            if outcome.code != "OK" and self._shape.retry_pause_s > 0:  # no busy loop while a server is down
                await asyncio.sleep(self._shape.retry_pause_s)

    async def stop(self) -> list[StreamOutcome]:
        """Lets the streams in flight finish; returns every outcome."""
        self._stopping.set()
        await asyncio.gather(*self._workers)
        return self.outcomes


def outcomes_between(outcomes: list[StreamOutcome], began_s: float, ended_s: float) -> list[StreamOutcome]:
    """Streams that were in flight at some point of [began_s, ended_s]."""
    return [o for o in outcomes if o.started_s <= ended_s and (o.ended_s == 0.0 or o.ended_s >= began_s)]


def count_codes(outcomes: list[StreamOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.code] = counts.get(outcome.code, 0) + 1
    return counts


def count_refusals(outcomes: list[StreamOutcome]) -> dict[str, int]:
    """Failed streams by status and refusal reason ("RESOURCE_EXHAUSTED/QUEUE_FULL"; "/-": none named)."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.code != "OK":
            key = f"{outcome.code}/{outcome.refusal_reason or '-'}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def failure_samples(outcomes: list[StreamOutcome], began_s: float, per_key: int = 3) -> dict[str, list[dict]]:
    """The first `per_key` failed streams of each status/refusal key (count_refusals' keys), each with
    what tells who ended it: its message, when it started in the run, how long it lasted, whether a
    token had come. A first-N list of distinct messages hides a rare class behind a frequent one."""
    samples: dict[str, list[dict]] = {}
    for outcome in outcomes:
        if outcome.code == "OK":
            continue
        key = f"{outcome.code}/{outcome.refusal_reason or '-'}"
        kept = samples.setdefault(key, [])
        if len(kept) < per_key:
            kept.append(
                {
                    "details": outcome.details,
                    "started_at_s": round(outcome.started_s - began_s, 3),
                    "duration_s": round(outcome.duration_s, 3),
                    "num_tokens": len(outcome.token_ids),
                    "max_tokens": outcome.max_tokens,
                }
            )
    return samples
