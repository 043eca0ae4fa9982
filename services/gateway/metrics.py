"""The gateway's Prometheus metrics: what clients experienced, request by request.

One `GatewayMetrics` per gateway owns a `CollectorRegistry` (never the global one: tests run
several gateways in one process). The HTTP app (services/gateway/http) serves it at /metrics on
the gateway's HTTP port (default 8000).

Every generation, gRPC or HTTP, goes through `GenerationPipeline.generate`, which keeps one
`RequestRecorder` per request:

    start            num_requests_in_flight + 1
    estimate         predictor_latency_seconds, output_length_estimates{source}, predictor_fallbacks
    each chunk with tokens: the first -> time_to_first_token_seconds, the next ones -> inter_token_latency_seconds
    final chunk      e2e_request_latency_seconds, request_{prompt,generation}_tokens, *_tokens_total,
                     request_success{finished_reason}
    error / cancel   request_failure{code}            (code: the gRPC status name, lower case)
    end              num_requests_in_flight - 1

Latencies are the client's view from the gateway: arrival at the gateway (validation, tokenizing
and the predictor call included) to the chunk handed to the client. The inter-token latency is the
gap between consecutive chunks that carry tokens (one observation per chunk, as a client sees it:
several tokens coalesced into one chunk arrive together). Names follow vLLM's where they mean the same.
"""

from __future__ import annotations

import asyncio
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common import metric_buckets
from services.common.errors import AliseError
from services.gateway.finish import FinishReason
from services.gateway.length_prediction import PredictionSource
from services.gateway.peers import GatewayPeers
from services.gateway.replica_metrics import ReplicaCollector

CANCELLED = grpc.StatusCode.CANCELLED.name.lower()  # the client went away before the last chunk


class GatewayMetrics:
    """The gateway's registry and the instruments the request recorders write to."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()  # never the global one
        self.in_flight = Gauge("alise:num_requests_in_flight", "Generations the gateway is serving.", registry=registry)
        self.success = Counter(
            "alise:request_success", "Finished generations by finish reason.", ["finished_reason"], registry=registry
        )
        self.failure = Counter(
            "alise:request_failure",
            "Generations ended by an error or a client cancel, by gRPC status code.",
            ["code"],
            registry=registry,
        )
        self.time_to_first_token_s = _histogram(
            "time_to_first_token_seconds",
            "Arrival at the gateway to the first token sent.",
            metric_buckets.TIME_TO_FIRST_TOKEN_S,
            registry,
        )
        self.inter_token_s = _histogram(
            "inter_token_latency_seconds",
            "Gap between consecutive chunks carrying tokens.",
            metric_buckets.INTER_TOKEN_S,
            registry,
        )
        self.e2e_s = _histogram(
            "e2e_request_latency_seconds",
            "Arrival at the gateway to the last chunk.",
            metric_buckets.REQUEST_S,
            registry,
        )
        self.prompt_tokens = _histogram(
            "request_prompt_tokens", "Prompt tokens per finished generation.", metric_buckets.TOKENS, registry
        )
        self.generation_tokens = _histogram(
            "request_generation_tokens", "Output tokens per finished generation.", metric_buckets.TOKENS, registry
        )
        self.prompt_tokens_total = Counter(
            "alise:prompt_tokens", "Prompt tokens of finished generations.", registry=registry
        )
        self.generation_tokens_total = Counter(
            "alise:generation_tokens", "Output tokens of finished generations.", registry=registry
        )
        self._add_prediction_instruments(registry)
        for reason in FinishReason:  # series exist from the start: rate() sees the first one
            self.success.labels(reason.value)

    def _add_prediction_instruments(self, registry: CollectorRegistry) -> None:
        self.predictor_latency_s = _histogram(
            "predictor_latency_seconds",
            "Time to get a request's output-length estimate (the predictor call, or the wait before falling back).",
            metric_buckets.SHORT_CALL_S,
            registry,
        )
        self.estimates = Counter(
            "alise:output_length_estimates",
            "Output-length estimates the engine scheduled with, by source.",
            ["source"],
            registry=registry,
        )
        self.predictor_fallbacks = Counter(
            "alise:predictor_fallbacks",
            "Requests a configured predictor did not answer in time (or failed), by what replaced it.",
            ["source"],
            registry=registry,
        )
        for source in PredictionSource:
            self.estimates.labels(source.value)
            if source is not PredictionSource.PREDICTOR:
                self.predictor_fallbacks.labels(source.value)

    def watch_peers(self, peers: GatewayPeers, loop: asyncio.AbstractEventLoop) -> None:
        """Adds the replica health and load gauges of the gateway's pools."""
        self.registry.register(ReplicaCollector(peers, loop))

    def start_request(self) -> RequestRecorder:
        """A recorder for one generation arriving now."""
        return RequestRecorder(self)


class RequestRecorder:
    """Per-request timing state; every method is called on the event loop of its request."""

    __slots__ = ("_metrics", "_arrival_s", "_last_token_s", "_ended")

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._arrival_s = time.monotonic()
        self._last_token_s: float | None = None  # when the previous chunk with tokens was sent
        self._ended = False  # finished or failed: later errors (the client closing the stream) are not counted
        metrics.in_flight.inc()

    def on_estimate(self, source: PredictionSource, elapsed_s: float, *, has_predictor: bool) -> None:
        metrics = self._metrics
        metrics.predictor_latency_s.observe(elapsed_s)
        metrics.estimates.labels(source.value).inc()
        if has_predictor and source is not PredictionSource.PREDICTOR:
            metrics.predictor_fallbacks.labels(source.value).inc()

    def on_chunk(self, num_tokens: int) -> None:
        """A chunk is handed to the client."""
        if not num_tokens:
            return
        now_s = time.monotonic()
        if self._last_token_s is None:
            self._metrics.time_to_first_token_s.observe(now_s - self._arrival_s)
        else:
            self._metrics.inter_token_s.observe(now_s - self._last_token_s)
        self._last_token_s = now_s

    def on_finish(self, finish_reason: FinishReason, num_prompt_tokens: int, num_completion_tokens: int) -> None:
        metrics = self._metrics
        metrics.e2e_s.observe(time.monotonic() - self._arrival_s)
        metrics.prompt_tokens.observe(num_prompt_tokens)
        metrics.generation_tokens.observe(num_completion_tokens)
        metrics.prompt_tokens_total.inc(num_prompt_tokens)
        metrics.generation_tokens_total.inc(num_completion_tokens)
        metrics.success.labels(finish_reason.value).inc()
        self._ended = True

    def on_error(self, error: BaseException) -> None:
        """The generation ended without a final chunk (ignored once it finished)."""
        if self._ended:
            return
        self._ended = True
        self._metrics.failure.labels(_status_code(error)).inc()

    def close(self) -> None:
        self._metrics.in_flight.dec()


def _status_code(error: BaseException) -> str:
    if isinstance(error, AliseError):
        return error.status_code.name.lower()
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return CANCELLED
    return grpc.StatusCode.INTERNAL.name.lower()


def _histogram(name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> Histogram:
    return Histogram(f"alise:{name}", documentation, buckets=buckets, registry=registry)
