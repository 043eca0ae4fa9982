"""GatewayMetrics' request recorder: what counts as a fallback, a failure, a finish."""

from __future__ import annotations

import asyncio

from services.common.errors import DeadlineExceeded
from services.gateway.finish import FinishReason
from services.gateway.length_prediction import PredictionSource
from services.gateway.metrics import GatewayMetrics


def _sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels)


def test_a_fallback_counts_only_when_a_predictor_was_configured():
    metrics = GatewayMetrics()
    metrics.start_request().on_estimate(PredictionSource.FALLBACK, 0.05, has_predictor=True)
    metrics.start_request().on_estimate(PredictionSource.FALLBACK, 0.0, has_predictor=False)
    metrics.start_request().on_estimate(PredictionSource.CLIENT_HINT, 0.05, has_predictor=True)
    metrics.start_request().on_estimate(PredictionSource.PREDICTOR, 0.004, has_predictor=True)
    assert _sample(metrics, "alise:predictor_fallbacks_total", source="fallback") == 1
    assert _sample(metrics, "alise:predictor_fallbacks_total", source="client_hint") == 1
    assert _sample(metrics, "alise:output_length_estimates_total", source="fallback") == 2
    assert _sample(metrics, "alise:output_length_estimates_total", source="predictor") == 1
    assert _sample(metrics, "alise:predictor_latency_seconds_count") == 4


def test_closing_the_stream_after_the_final_chunk_is_not_a_failure():
    metrics = GatewayMetrics()
    recorder = metrics.start_request()
    assert _sample(metrics, "alise:num_requests_in_flight") == 1
    recorder.on_chunk(1)
    recorder.on_chunk(0)  # text-only chunk: no token, no latency sample
    recorder.on_chunk(2)
    recorder.on_finish(FinishReason.STOP, num_prompt_tokens=7, num_completion_tokens=3)
    recorder.on_error(GeneratorExit())  # the client closed the stream at the final chunk
    recorder.close()
    assert _sample(metrics, "alise:request_success_total", finished_reason="stop") == 1
    assert _sample(metrics, "alise:request_failure_total", code="cancelled") is None
    assert _sample(metrics, "alise:time_to_first_token_seconds_count") == 1
    assert _sample(metrics, "alise:inter_token_latency_seconds_count") == 1
    assert (_sample(metrics, "alise:prompt_tokens_total"), _sample(metrics, "alise:generation_tokens_total")) == (7, 3)
    assert _sample(metrics, "alise:num_requests_in_flight") == 0


def test_failures_are_counted_by_status_code():
    metrics = GatewayMetrics()
    for error in (DeadlineExceeded("late"), asyncio.CancelledError(), RuntimeError("bug")):
        recorder = metrics.start_request()
        recorder.on_error(error)
        recorder.close()
    for code in ("deadline_exceeded", "cancelled", "internal"):
        assert _sample(metrics, "alise:request_failure_total", code=code) == 1
    assert _sample(metrics, "alise:num_requests_in_flight") == 0
