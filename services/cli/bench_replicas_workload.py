"""The workload of `bench_replicas` and one routing run of it through a gateway over the fleet.

Workload: ShareGPT first turns (vLLM's filter: prompt and response >= 4 tokens, prompt <= 1,024,
prompt + response <= 2,048), read at run time from ../shared/data when present, else a synthetic
log-normal set with the same seed. Output lengths are the real response lengths scaled by
`output_scale` and clipped (the CPU engine of the default model cannot run ShareGPT's 327-token
mean at a useful rate), sent as max_tokens with ignore_eos, vLLM-style; arrivals are Poisson.

One run: a fresh in-process gateway with the given routing policy, the workload replayed on its
arrival times, and every engine's GetStats sampled every 100 ms (queue length and predicted
outstanding tokens, the engine's own view) for the balance figures.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import pathlib
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import grpc

from services.cli.streams import timed_stream
from services.common.contracts import (
    common_pb2,
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
)

SHAREGPT_FILE = pathlib.Path("sharegpt") / "sharegpt_v3_first_turn.dev.jsonl.gz"
SAMPLE_INTERVAL_S = 0.1
MIN_TOKENS, MAX_PROMPT_TOKENS, MAX_TOTAL_TOKENS = 4, 1024, 2048  # vLLM's benchmark filter


@dataclass(frozen=True)
class WorkItem:
    """One request of the workload."""

    prompt: str  # prompt text (truncated to max_prompt_chars)
    max_tokens: int  # output tokens to generate (ignore_eos): the scaled real response length
    arrival_s: float  # seconds after the start of the run


def load_workload(
    data_dir: pathlib.Path,
    *,
    num_requests: int,
    rate_per_s: float,
    seed: int,
    output_scale: float,
    max_output_tokens: int,
    max_prompt_chars: int,
) -> tuple[list[WorkItem], str]:
    """The workload and its source ("sharegpt" or "synthetic")."""
    rng = random.Random(seed)
    path = data_dir / SHAREGPT_FILE
    if path.is_file():
        pairs, source = _sharegpt_pairs(path, rng, num_requests), "sharegpt"
    else:
        pairs = [
            (f"Request {i}: tell me about topic {rng.randrange(1000)}.", rng.lognormvariate(5.3, 0.9))
            for i in range(num_requests)
        ]
        source = "synthetic"
    arrival_s, items = 0.0, []
    for prompt, response_tokens in pairs:
        arrival_s += rng.expovariate(rate_per_s)
        tokens = max(MIN_TOKENS, min(max_output_tokens, round(response_tokens * output_scale)))
        items.append(WorkItem(prompt[:max_prompt_chars], tokens, arrival_s))
    return items, source


def _sharegpt_pairs(path: pathlib.Path, rng: random.Random, num: int) -> list[tuple[str, float]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines]
    kept = [
        (r["prompt"], float(r["response_llama2_tokens"]))
        for r in records
        if r["prompt_llama2_tokens"] >= MIN_TOKENS
        and r["response_llama2_tokens"] >= MIN_TOKENS
        and r["prompt_llama2_tokens"] <= MAX_PROMPT_TOKENS
        and r["prompt_llama2_tokens"] + r["response_llama2_tokens"] <= MAX_TOTAL_TOKENS
    ]
    return rng.sample(kept, num)


class EngineSampler:
    """Samples each engine's GetStats every SAMPLE_INTERVAL_S while a run lasts."""

    def __init__(self, addresses: list[str]) -> None:
        self._channels = {a: grpc.aio.insecure_channel(a) for a in addresses}
        self._stubs = {a: engine_service_pb2_grpc.EngineServiceStub(c) for a, c in self._channels.items()}
        self.samples: dict[str, list[tuple[int, float]]] = {a: [] for a in addresses}  # (queued, tokens)
        self._task: asyncio.Task[None] | None = None

    async def generated_tokens(self) -> dict[str, int]:
        request = engine_service_pb2.EngineServiceGetStatsRequest()
        return {a: (await s.GetStats(request, timeout=10)).num_generated_tokens for a, s in self._stubs.items()}

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        request = engine_service_pb2.EngineServiceGetStatsRequest()
        while True:
            replies = await asyncio.gather(*(s.GetStats(request, timeout=5) for s in self._stubs.values()))
            for address, reply in zip(self._stubs, replies):
                queued = reply.num_running + reply.num_waiting + reply.num_preempted
                self.samples[address].append((queued, reply.predicted_outstanding_tokens))
            await asyncio.sleep(SAMPLE_INTERVAL_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()


async def replay(gateway_address: str, workload: list[WorkItem], timeout_s: float) -> list[dict[str, Any]]:
    """Sends every item at its arrival time; returns one record per request (in workload order)."""
    async with grpc.aio.insecure_channel(gateway_address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        started_s = time.monotonic()

        async def one(item: WorkItem) -> dict[str, Any]:
            await asyncio.sleep(max(0.0, started_s + item.arrival_s - time.monotonic()))
            sampling = common_pb2.SamplingParams(max_tokens=item.max_tokens, temperature=0.0, ignore_eos=True)
            request = gateway_service_pb2.GenerateRequest(prompt_text=item.prompt, sampling=sampling)
            try:
                timing = await timed_stream(lambda: stub.Generate(request, timeout=timeout_s))
            except grpc.aio.AioRpcError as error:
                return {"status": error.code().name, "max_tokens": item.max_tokens}
            return {
                "status": "OK",
                "max_tokens": item.max_tokens,
                "num_tokens": timing.num_tokens,
                "ttft_s": timing.time_to_first_token_s,
                "e2e_s": timing.end_to_end_s,
                "done_s": time.monotonic() - started_s,
            }

        return await asyncio.gather(*(one(item) for item in workload))


def latency_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency figures over the successful requests (vLLM's: TTFT, end-to-end, normalized)."""
    ok = [r for r in records if r["status"] == "OK" and r["num_tokens"] > 0]
    e2e = sorted(r["e2e_s"] for r in ok)
    normalized = [r["e2e_s"] / r["num_tokens"] for r in ok]
    return {
        "num_ok": len(ok),
        "num_failed": len(records) - len(ok),
        "mean_e2e_s": statistics.fmean(e2e) if e2e else None,
        "p50_e2e_s": _percentile(e2e, 0.5),
        "p99_e2e_s": _percentile(e2e, 0.99),
        "mean_normalized_latency_s_per_token": statistics.fmean(normalized) if normalized else None,
        "mean_ttft_s": statistics.fmean(r["ttft_s"] for r in ok) if ok else None,
        "makespan_s": max((r["done_s"] for r in ok), default=None),
    }


def balance_summary(samples: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    """Per replica mean/max queue; and how far apart the replicas were, averaged over time."""
    per_replica = {
        a: {
            "mean_queued_requests": statistics.fmean(q for q, _ in s) if s else 0.0,
            "max_queued_requests": max((q for q, _ in s), default=0),
            "mean_outstanding_tokens": statistics.fmean(t for _, t in s) if s else 0.0,
        }
        for a, s in samples.items()
    }
    num = min(len(s) for s in samples.values())
    rows = [[samples[a][i] for a in samples] for i in range(num)]
    queue_gap = [max(q for q, _ in row) - min(q for q, _ in row) for row in rows]
    token_gap = [max(t for _, t in row) - min(t for _, t in row) for row in rows]
    return {
        "per_replica": per_replica,
        "num_samples": num,
        "mean_queue_gap_requests": statistics.fmean(queue_gap) if rows else None,
        "mean_outstanding_gap_tokens": statistics.fmean(token_gap) if rows else None,
    }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)]
