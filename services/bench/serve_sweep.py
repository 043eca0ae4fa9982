"""The measurements of `alise bench serve` against one gateway: unloaded latency, and one rate point.

    unloaded: the first num_unloaded_requests requests, one at a time (no queueing at all)
    sweep:    for each rate, every request at its gamma/Poisson arrival time (the same requests and,
              for a seed, the same arrival pattern scaled by the rate) from the client processes
    capacity: a closed loop holding N requests in the system over the whole list (the simulator's
              saturation run); capacity = completions per second over the middle window of the
              completions (steady_state.closed_loop_capacity), where the system is full

Latency is measured from the moment the client sent the request (vLLM's convention); how late
that send was against its schedule is the client's send lag, reported separately so that a run
limited by the load generator is flagged rather than blamed on the server.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass
from typing import Sequence

import grpc

from services.bench.arrivals import arrival_times_s
from services.bench.latency_metrics import LatencySummary, RequestRecord, Slo, queue_is_growing, summarize
from services.bench.serve_clients import ClientHealth, ClientResult, run_load
from services.bench.serve_config import ServeConfig
from services.bench.serve_prompts import ServeRequest
from services.bench.serve_steady import SteadyFigures, measured_records, steady_figures
from services.bench.serve_worker import send_one
from services.bench.steady_state import closed_loop_capacity
from services.bench.sustainable_rate import RatePoint
from services.common.contracts import gateway_service_pb2_grpc
from services.common.server import GRPC_OPTIONS


@dataclass(frozen=True)
class RateRun:
    """One rate point of one policy."""

    rate_per_s: float  # offered request rate, requests/s
    summary: LatencySummary | None  # figures of the measured finished requests (serve_steady.py); None if none
    queue_growing: bool  # in-system count still rising over the second half (latency_metrics; informative)
    num_failed: int  # requests that ended with an error
    errors: dict[str, int]  # failed requests by gRPC status name
    num_short: int  # finished requests with fewer tokens than max_tokens (should be 0: ignore_eos)
    client: ClientHealth  # the load generator's figures
    client_bottleneck: bool  # send lag or client CPU above the configured limits
    steady: SteadyFigures | None = None  # SLO attainment and stability of the measured window; None if none finished
    span_s: tuple[float, float] = (0.0, 0.0)  # first send, last stream end (time.monotonic, shared by processes)

    @property
    def is_stable(self) -> bool:
        """The steady-state stability check (serve_steady.py); False when nothing finished."""
        return self.steady is not None and self.steady.is_stable

    def point(self) -> RatePoint:
        """The point the sustainable rate is read from: an unstable point is not sustained."""
        mean = self.summary.mean_normalized_latency_s_per_token if self.summary else float("inf")
        p99 = self.summary.p99_normalized_latency_s_per_token if self.summary else float("inf")
        return RatePoint(self.rate_per_s, mean, p99, not self.is_stable, self.num_failed)


def to_records(results: Sequence[ClientResult]) -> list[RequestRecord]:
    """Records of the requests that finished without error and produced tokens."""
    return [
        RequestRecord(
            request_id=r.request_id,
            arrival_s=r.sent_s,
            first_token_s=r.first_token_s,
            finish_s=r.finish_s,
            num_prompt_tokens=r.num_prompt_tokens,
            num_output_tokens=r.num_output_tokens,
            num_preemptions=r.num_preemptions,
        )
        for r in results
        if r.error is None and r.first_token_s is not None and r.num_output_tokens > 0
    ]


async def measure_unloaded(gateway_address: str, requests: Sequence[ServeRequest], config: ServeConfig) -> float:
    """Mean normalized latency (s/token) of requests sent one at a time; RuntimeError if one fails."""
    async with grpc.aio.insecure_channel(gateway_address, options=GRPC_OPTIONS) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        normalized = []
        for index, request in enumerate(requests):
            job = {**request.job(config.seed + index), "request_id": f"{request.request_id}-unloaded"}
            result = await send_one(stub, job, 0.0, config.timeout_s)
            if result["error"] is not None or result["num_output_tokens"] == 0:
                raise RuntimeError(f"unloaded request {request.request_id} failed: {result['error']}")
            normalized.append((result["finish_s"] - result["sent_s"]) / result["num_output_tokens"])
    return statistics.fmean(normalized)


async def run_rate(
    gateway_address: str, requests: Sequence[ServeRequest], rate_per_s: float, config: ServeConfig, slo: Slo
) -> RateRun:
    """Offers `requests` at `rate_per_s` and summarizes what came back."""
    arrivals_s = arrival_times_s(len(requests), rate_per_s, seed=config.seed, burstiness=config.burstiness)
    load = await run_load(
        requests,
        arrivals_s,
        gateway_address=gateway_address,
        num_processes=config.num_client_processes,
        timeout_s=config.timeout_s,
        seed=config.seed,
    )
    records = to_records(load.results)
    measured = measured_records(records, config.window)
    max_tokens = {request.request_id: request.max_tokens for request in requests}
    errors = collections.Counter(r.error.split(":", 1)[0] for r in load.results if r.error is not None)
    return RateRun(
        rate_per_s=rate_per_s,
        summary=summarize(measured, slo=slo) if measured else None,
        queue_growing=queue_is_growing(records) if records else True,
        num_failed=len(load.results) - len(records),
        errors=dict(errors),
        num_short=sum(1 for r in records if r.num_output_tokens < max_tokens[r.request_id]),
        client=load.health,
        client_bottleneck=(
            load.health.p99_send_lag_s > config.max_send_lag_s
            or load.health.max_cpu_utilization > config.max_client_cpu_utilization
        ),
        steady=steady_figures(records, config.window, config.attainment_slo) if records else None,
        span_s=(min(r.sent_s for r in load.results), max(r.finish_s for r in load.results)),
    )


@dataclass(frozen=True)
class CapacityProbe:
    """One closed-loop saturation run of one policy."""

    policy: str  # whose stack was probed
    concurrency: int  # requests held in the system
    capacity_per_s: float  # completions/s over the middle window of the completions
    num_records: int  # requests that finished without error
    num_failed: int  # requests that ended with an error (a probe with failures is suspect)
    duration_s: float  # first send to last completion
    output_token_throughput_per_s: float  # tokens/s over the same middle window
    client: ClientHealth  # the load generator's figures


async def run_closed_loop(
    gateway_address: str, requests: Sequence[ServeRequest], policy: str, concurrency: int, config: ServeConfig
) -> CapacityProbe:
    """Holds `concurrency` of `requests` in flight until all are done; ValueError if too few finished."""
    load = await run_load(
        requests,
        [0.0] * len(requests),
        gateway_address=gateway_address,
        num_processes=config.num_client_processes,
        timeout_s=config.timeout_s,
        seed=config.seed,
        concurrency=concurrency,
    )
    records = to_records(load.results)
    capacity_per_s = closed_loop_capacity(records, config.window)
    by_finish = sorted(records, key=lambda record: record.finish_s)
    first, end = config.window.bounds(len(by_finish))
    window_s = by_finish[end - 1].finish_s - by_finish[first].finish_s
    tokens = sum(record.num_output_tokens for record in by_finish[first + 1 : end])
    return CapacityProbe(
        policy=policy,
        concurrency=concurrency,
        capacity_per_s=capacity_per_s,
        num_records=len(records),
        num_failed=len(load.results) - len(records),
        duration_s=max(r.finish_s for r in load.results) - min(r.sent_s for r in load.results),
        output_token_throughput_per_s=tokens / window_s,
        client=load.health,
    )
