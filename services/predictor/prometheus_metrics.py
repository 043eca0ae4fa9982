"""The predictor's Prometheus metrics: its live accuracy, its batches, its feedback and its model.

(metrics.py beside this file holds the offline evaluation scores; this file is the /metrics export.)

- The live accuracy (Kendall's tau-b of predicted p50 vs actual length, MAE, p90 coverage) is the
  predictor scoring itself on the finished requests the gateway reports (live_accuracy.py). It is
  computed at scrape time from the window (O(n^2) for tau: ~10 ms at 1,000 requests), so requests
  pay nothing for it. An empty window exports no accuracy series: "no data", not a NaN.
- Batch time and size are observed by the wrapper the micro-batcher calls, once per batch, on the
  worker thread that runs the ONNX session.
- Counters are the service's own ints, read at scrape time (atomic under the GIL).
"""

from __future__ import annotations

import math
import time
from typing import Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common import metric_buckets
from services.predictor.batcher import MicroBatcher, PredictFn
from services.predictor.feedback_intake import FeedbackIntake
from services.predictor.model import LengthDistribution, PromptInput
from services.predictor.reload import ModelHolder


class PredictorMetrics:
    """One predictor's registry: batch histograms plus the scrape-time state collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_s = Histogram(
            "alise:predictor_batch_seconds",
            "Wall time of one prediction batch (embedding + trees).",
            buckets=metric_buckets.SHORT_CALL_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "alise:predictor_batch_size",
            "Prompts per prediction batch.",
            buckets=metric_buckets.BATCH_SIZE,
            registry=self.registry,
        )

    def timed(self, predict: PredictFn) -> PredictFn:
        """`predict` observed once per batch (what the micro-batcher runs)."""

        def timed_predict(inputs: Sequence[PromptInput]) -> list[LengthDistribution]:
            started = time.perf_counter()
            outputs = predict(inputs)
            self.batch_s.observe(time.perf_counter() - started)
            self.batch_size.observe(len(inputs))
            return outputs

        return timed_predict

    def watch(self, holder: ModelHolder, batcher: MicroBatcher, intake: FeedbackIntake) -> None:
        """Adds the scrape-time collector over the running service's state."""
        self.registry.register(PredictorStateCollector(holder, batcher, intake))


class PredictorStateCollector(Collector):
    """Live accuracy gauges, counters and the model's identity, read when Prometheus scrapes."""

    def __init__(self, holder: ModelHolder, batcher: MicroBatcher, intake: FeedbackIntake) -> None:
        self._holder = holder
        self._batcher = batcher
        self._intake = intake

    def collect(self) -> Iterator[Metric]:
        yield from self._live_accuracy()
        yield _counter("predictor_predictions", "Prompts predicted.", self._batcher.num_inputs)
        yield _counter("predictor_batches", "Prediction batches run.", self._batcher.num_batches)
        yield _counter("predictor_feedback", "Finished requests reported by gateways.", self._intake.num_accepted)
        yield _counter(
            "predictor_feedback_censored",
            "Of those, finished at max_tokens (length unknown).",
            self._intake.num_censored,
        )
        reloads = CounterMetricFamily(
            "alise:predictor_model_reloads",
            "Model reload attempts that changed the model (success) or kept the old one (failure).",
            labels=["outcome"],
        )
        reloads.add_metric(["success"], self._holder.num_reloads)
        reloads.add_metric(["failure"], self._holder.num_failed_reloads)
        yield reloads
        current = self._holder.current
        model = InfoMetricFamily("alise:predictor_model", "The length model serving now.")
        model.add_metric([], {"version": current.model_version, "providers": ",".join(current.model.providers)})
        yield model

    def _live_accuracy(self) -> Iterator[Metric]:
        live = self._intake.window.snapshot()
        yield _gauge(
            "predictor_live_window_requests",
            "Finished requests in the live accuracy window (used the predictor's estimate, length known).",
            live.num_requests,
        )
        figures = (
            (
                "predictor_live_kendall_tau",
                "Kendall's tau-b of predicted p50 vs actual output tokens.",
                live.kendall_tau,
            ),
            ("predictor_live_mae_tokens", "Mean |predicted p50 - actual| output tokens.", live.mae_tokens),
            (
                "predictor_live_p90_coverage",
                "Share of actual lengths at or below the predicted p90.",
                live.coverage_p90,
            ),
        )
        for name, documentation, figure in figures:
            if not math.isnan(figure):
                yield _gauge(name, documentation, figure)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"alise:{name}", documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"alise:{name}", documentation, value=value)
