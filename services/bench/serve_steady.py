"""The steady-state figures of one `alise bench serve` rate point (the simulator's method, same code).

A rate point sends a finite list of requests, so it has a warm-up (the stack starts empty) and a drain
(arrivals stop and the queue empties). As in `alise bench sim` (steady_state.py):

    measured requests  those whose send rank is in [warmup_fraction * n, (1 - drain_fraction) * n)
                       (`--warmup-fraction`, `--drain-fraction`, default 10% each); every request is
                       still sent and awaited, so the last ones keep the load on while these finish
    latency figures    LatencySummary and the SLO attainment over the measured requests only
    stability          steady_state.stability over the measured window: flagged when completions
                       fall short of arrivals by > 2% or the in-system count rises by > 2% of the
                       window's arrivals; a rate point that is not stable is not sustained
    SLO attainment     DistServe's: share of measured requests with TTFT <= `--slo-ttft-s` (default
                       1 s) and TPOT <= `--slo-tpot-ms` (default 100 ms), slo_metrics.headline_metrics

Failed requests have no timings: they are left out of the records, counted in RateRun.num_failed,
and a point with a failure is not sustained either (sustainable_rate.RatePoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from services.bench.latency_metrics import RequestRecord
from services.bench.slo_metrics import HeadlineMetrics, SloBounds, headline_metrics
from services.bench.steady_state import Stability, SteadyStateWindow, stability


@dataclass(frozen=True)
class SteadyFigures:
    """What one rate point reports about its measured window."""

    num_records: int  # finished requests of the whole run
    num_measured: int  # of them, inside the warm-up / drain window
    headline: HeadlineMetrics  # SLO attainment, TTFT p50 / p99, normalized latency over the measured ones
    stability: Stability  # the window's shortfall and rise

    @property
    def is_stable(self) -> bool:
        return self.stability.is_stable


def measured_records(records: Sequence[RequestRecord], window: SteadyStateWindow) -> list[RequestRecord]:
    """The records inside the window (by send time); all of them when there are none to drop."""
    return window.measured(records) if records else []


def steady_figures(records: Sequence[RequestRecord], window: SteadyStateWindow, slo: SloBounds) -> SteadyFigures:
    """The figures of the module docstring; ValueError without records."""
    measured = measured_records(records, window)
    if not measured:
        raise ValueError("no finished request to measure")
    return SteadyFigures(len(records), len(measured), headline_metrics(measured, slo), stability(records, window))
