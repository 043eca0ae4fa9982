"""The engine's Prometheus metrics, read from its own state: nothing goes over gRPC to collect them.

Two sources, both cheap for the engine thread:

- at scrape time, `EngineStateCollector` reads the latest `EngineSnapshot` (immutable, replaced
  by the engine thread after each step) for the gauges, and the engine's plain int counters
  (prompt / generated tokens, steps, preemptions by cause, swaps by codec) for the counters. Ints
  and fixed-key dicts are read atomically under the GIL, so no lock is taken on the hot path.
- once per finished request, on the engine thread, `EngineMetrics.on_finish` observes the
  request histograms (queue time, TTFT, end-to-end, time per output token, prompt and generation
  tokens) and counts its finish reason: a handful of lock-protected increments per request,
  none per token.

Names follow vLLM's (`vllm:` -> `alise:`) where a metric means the same.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common import metric_buckets
from services.engine.engine_core import EngineCore
from services.engine.engine_loop import RequestTimings
from services.engine.kv_offload.kv_codec import KvCodec
from services.engine.kv_offload.swap_measurements import SwapMeasurements
from services.engine.request import FinishReason, Request
from services.engine.scheduler.preemption import PreemptionCause
from services.engine.spec.spec_stats import SpecStatsSnapshot
from services.engine.stats import EngineSnapshot


class EngineMetrics:
    """One engine's registry: request histograms observed at finish plus the state collector."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._model_name = model_name
        histogram = self._histogram
        self.queue_time_s = histogram(
            "request_queue_time_seconds", "Arrival to first scheduled step.", metric_buckets.REQUEST_S
        )
        self.time_to_first_token_s = histogram(
            "time_to_first_token_seconds",
            "Arrival at the engine to the first output token.",
            metric_buckets.TIME_TO_FIRST_TOKEN_S,
        )
        self.e2e_latency_s = histogram(
            "e2e_request_latency_seconds", "Arrival at the engine to finish.", metric_buckets.REQUEST_S
        )
        self.time_per_output_token_s = histogram(
            "time_per_output_token_seconds",
            "Mean time per output token after the first, per request.",
            metric_buckets.INTER_TOKEN_S,
        )
        self.prompt_tokens = histogram(
            "request_prompt_tokens", "Prompt tokens per finished request.", metric_buckets.TOKENS
        )
        self.generation_tokens = histogram(
            "request_generation_tokens", "Output tokens per finished request.", metric_buckets.TOKENS
        )
        self.finished = Counter(
            "alise:request_success", "Finished requests by finish reason.", ["finished_reason"], registry=self.registry
        )
        for reason in FinishReason:  # every series exists from the start, so rate() sees the first one
            self.finished.labels(reason.value)

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(f"alise:{name}", documentation, buckets=buckets, registry=self.registry)

    def watch(self, core: EngineCore, snapshot: Callable[[], EngineSnapshot], swaps: SwapMeasurements | None) -> None:
        """Adds the scrape-time collector over the engine's state (once the engine is built)."""
        self.registry.register(EngineStateCollector(core, snapshot, swaps, self._model_name))

    def on_finish(self, request: Request, reason: FinishReason, timings: RequestTimings) -> None:
        """Engine thread, once per finished request (an EngineLoop FinishObserver)."""
        num_output = len(request.output_token_ids)
        self.queue_time_s.observe(timings.queue_time_s)
        if num_output:
            self.time_to_first_token_s.observe(timings.time_to_first_token_s)
        if num_output > 1:
            decode_s = timings.end_to_end_s - timings.time_to_first_token_s
            self.time_per_output_token_s.observe(decode_s / (num_output - 1))
        self.e2e_latency_s.observe(timings.end_to_end_s)
        self.prompt_tokens.observe(len(request.prompt_token_ids))
        self.generation_tokens.observe(num_output)
        self.finished.labels(reason.value).inc()


class EngineStateCollector(Collector):
    """Gauges and counters of the running engine, read when Prometheus scrapes."""

    def __init__(
        self, core: EngineCore, snapshot: Callable[[], EngineSnapshot], swaps: SwapMeasurements | None, model_name: str
    ) -> None:
        self._core = core
        self._snapshot = snapshot
        self._swaps = swaps  # None: no memory service, every preemption recomputes
        self._model_name = model_name

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        yield from _load_gauges(snapshot)
        info = InfoMetricFamily("alise:engine", "This engine replica.")
        info.add_metric([], {"engine_id": snapshot.engine_id, "model_name": self._model_name})
        yield info
        policy = InfoMetricFamily("alise:scheduler_policy", "The scheduling policy this engine runs.")
        policy.add_metric([], {"policy": snapshot.scheduler_policy})
        yield policy
        yield from self._counters()
        yield from _spec_metrics(snapshot.spec)
        if self._swaps is not None:
            yield from _swap_metrics(self._swaps)

    def _counters(self) -> Iterator[Metric]:
        core, scheduler = self._core, self._core.scheduler
        yield _counter("prompt_tokens", "Prompt tokens of the requests added.", core.num_prompt_tokens)
        yield _counter("generation_tokens", "Output tokens generated.", core.num_generated_tokens)
        yield _counter("engine_steps", "Engine steps that ran the model.", core.num_steps)
        preemptions = CounterMetricFamily(
            "alise:num_preemptions", "Running requests preempted, by cause.", labels=["cause"]
        )
        for cause in PreemptionCause:
            preemptions.add_metric([cause.value], scheduler.num_preemptions_by_cause[cause])
        yield preemptions
        preempted_kv = scheduler.preempted_kv
        yield _counter(
            "recomputed_tokens",
            "KV tokens dropped by preemption and computed again.",
            preempted_kv.num_recomputed_tokens,
        )
        yield _counter("kv_restores", "Resumed requests that got their swapped KV back.", preempted_kv.num_restored)
        yield _counter(
            "kv_restores_lost",
            "Resumed requests whose swapped KV was gone (recomputed).",
            preempted_kv.num_restores_lost,
        )


def _load_gauges(snapshot: EngineSnapshot) -> Iterator[Metric]:
    yield _gauge("num_requests_running", "Requests in the running batch.", snapshot.num_running)
    yield _gauge(
        "num_requests_waiting",
        "Requests waiting to run (new and preempted).",
        snapshot.num_waiting + snapshot.num_preempted,
    )
    yield _gauge("num_requests_preempted", "Preempted requests waiting to resume.", snapshot.num_preempted)
    total = snapshot.num_kv_blocks_total
    yield _gauge(
        "kv_cache_usage_perc",
        "Share of KV cache blocks in use (0 to 1).",
        snapshot.num_kv_blocks_used / total if total else 0.0,
    )
    yield _gauge("num_kv_blocks", "Blocks in the KV cache pool.", total)
    yield _gauge(
        "predicted_outstanding_tokens",
        "Predicted remaining output tokens of live requests.",
        snapshot.predicted_outstanding_tokens,
    )
    yield _gauge(
        "predicted_outstanding_work_seconds",
        "The same at the last measured output-token rate.",
        snapshot.predicted_outstanding_work_s,
    )


def _spec_metrics(spec: SpecStatsSnapshot) -> Iterator[Metric]:
    """Speculative decoding (all zero when it is off); vLLM's spec_decode counters under alise's prefix."""
    yield _counter("spec_decode_num_draft_tokens", "Draft tokens verified.", spec.num_draft_tokens)
    yield _counter("spec_decode_num_accepted_tokens", "Draft tokens accepted.", spec.num_accepted_tokens)
    yield _counter(
        "spec_decode_num_drafts", "Verifies (a request's drafts checked in one step).", spec.num_request_verifies
    )
    yield _gauge(
        "spec_decode_acceptance_rate", "Accepted over verified draft tokens since start.", spec.acceptance_rate
    )
    yield _gauge(
        "spec_decode_mean_accepted_length", "Accepted draft tokens per verify since start.", spec.mean_accepted_length
    )


def _swap_metrics(swaps: SwapMeasurements) -> Iterator[Metric]:
    """Swaps this engine made, by codec (the memory service decided them), and the lossy codecs'
    measured error on this engine's KV."""
    swap_outs = CounterMetricFamily(
        "alise:kv_swap_outs", "Preempted requests whose KV was swapped to the host tier, by codec.", labels=["codec"]
    )
    errors = GaugeMetricFamily(
        "alise:kv_codec_relative_error",
        "Measured relative error of a lossy KV codec on this engine's KV.",
        labels=["codec"],
    )
    for codec in KvCodec:
        swap_outs.add_metric([codec.value], swaps.num_swapped_out[codec])
        error = swaps.relative_error.get(codec)
        if error is not None:
            errors.add_metric([codec.value], error)
    yield swap_outs
    yield errors
    swap_bytes = CounterMetricFamily(
        "alise:kv_swap_bytes", "Encoded KV bytes moved to and from the host tier.", labels=["direction"]
    )
    swap_bytes.add_metric(["out"], swaps.num_bytes_out)
    swap_bytes.add_metric(["in"], swaps.num_bytes_in)
    yield swap_bytes


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"alise:{name}", documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"alise:{name}", documentation, value=value)
