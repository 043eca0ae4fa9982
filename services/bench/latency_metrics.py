"""Per-request timing records and what a benchmark reports about them (vLLM's metric set).

All times of one run are on one clock, in seconds; only differences matter. Definitions:

    e2e         finish - arrival                       (arrival = when the request was due)
    ttft        first_token - arrival
    normalized  e2e / output tokens  (s/token: the ALISE paper's and Orca's latency metric)
    tpot        (e2e - ttft) / (output tokens - 1), 0 for a single-token output
    goodput     requests meeting every set SLO bound / duration
    duration    first arrival -> last finish

Percentiles are numpy's default (linear interpolation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# queue_is_growing: the run is "not sustained" when the least-squares rise of the number of
# requests in the system, over the second half of the arrival window, exceeds this fraction of the
# requests that arrived in that window (a server that keeps up with 90% of the offered load or
# less), and at least MIN_GROWTH_REQUESTS (so a handful of arrivals cannot trip it by noise).
GROWTH_FRACTION_THRESHOLD = 0.1
MIN_GROWTH_REQUESTS = 2.0
NUM_GRID_POINTS = 64  # samples of the in-system count over the window


@dataclass(frozen=True)
class RequestRecord:
    """When one finished request arrived, produced its first token and finished (one clock, s)."""

    request_id: str  # unique within the run
    arrival_s: float  # when the request was due to arrive (its scheduled arrival time)
    first_token_s: float  # when its first output token was received
    finish_s: float  # when its last output token was received
    num_prompt_tokens: int  # prompt length, tokens
    num_output_tokens: int  # output tokens generated, >= 1
    num_preemptions: int = 0  # times it was preempted while running

    @property
    def e2e_latency_s(self) -> float:
        return self.finish_s - self.arrival_s

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def normalized_latency_s_per_token(self) -> float:
        return self.e2e_latency_s / max(1, self.num_output_tokens)

    @property
    def tpot_s(self) -> float:
        if self.num_output_tokens <= 1:
            return 0.0
        return (self.e2e_latency_s - self.ttft_s) / (self.num_output_tokens - 1)


@dataclass(frozen=True)
class Slo:
    """Bounds a request must all meet to count toward goodput; None = no bound on that metric."""

    max_ttft_s: float | None = None  # time to first token, s
    max_normalized_latency_s_per_token: float | None = None  # e2e / output tokens, s/token

    def is_met_by(self, record: RequestRecord) -> bool:
        if self.max_ttft_s is not None and record.ttft_s > self.max_ttft_s:
            return False
        bound = self.max_normalized_latency_s_per_token
        return bound is None or record.normalized_latency_s_per_token <= bound


@dataclass(frozen=True)
class LatencySummary:
    """Figures of one run (one policy at one request rate)."""

    num_requests: int  # finished requests summarized
    duration_s: float  # first arrival -> last finish
    request_throughput_per_s: float  # num_requests / duration_s
    output_token_throughput_per_s: float  # output tokens / duration_s
    mean_normalized_latency_s_per_token: float
    p50_normalized_latency_s_per_token: float
    p99_normalized_latency_s_per_token: float
    mean_ttft_s: float
    p50_ttft_s: float
    p99_ttft_s: float
    mean_tpot_s: float
    p99_tpot_s: float
    mean_e2e_latency_s: float
    p99_e2e_latency_s: float
    goodput_per_s: float  # requests meeting the SLO / duration_s
    num_meeting_slo: int  # requests meeting the SLO
    num_preemptions: int  # sum over requests


def summarize(records: Sequence[RequestRecord], *, slo: Slo) -> LatencySummary:
    """Summary of finished requests; raises ValueError when there are none."""
    if not records:
        raise ValueError("summarize needs at least one record")
    duration_s = max(r.finish_s for r in records) - min(r.arrival_s for r in records)
    per_s = 1.0 / duration_s if duration_s > 0 else math.nan
    normalized = np.array([r.normalized_latency_s_per_token for r in records])
    ttft = np.array([r.ttft_s for r in records])
    tpot = np.array([r.tpot_s for r in records])
    e2e = np.array([r.e2e_latency_s for r in records])
    num_meeting_slo = sum(1 for r in records if slo.is_met_by(r))
    return LatencySummary(
        num_requests=len(records),
        duration_s=duration_s,
        request_throughput_per_s=len(records) * per_s,
        output_token_throughput_per_s=sum(r.num_output_tokens for r in records) * per_s,
        mean_normalized_latency_s_per_token=float(normalized.mean()),
        p50_normalized_latency_s_per_token=float(np.percentile(normalized, 50)),
        p99_normalized_latency_s_per_token=float(np.percentile(normalized, 99)),
        mean_ttft_s=float(ttft.mean()),
        p50_ttft_s=float(np.percentile(ttft, 50)),
        p99_ttft_s=float(np.percentile(ttft, 99)),
        mean_tpot_s=float(tpot.mean()),
        p99_tpot_s=float(np.percentile(tpot, 99)),
        mean_e2e_latency_s=float(e2e.mean()),
        p99_e2e_latency_s=float(np.percentile(e2e, 99)),
        goodput_per_s=num_meeting_slo * per_s,
        num_meeting_slo=num_meeting_slo,
        num_preemptions=sum(r.num_preemptions for r in records),
    )


def in_system_counts(records: Sequence[RequestRecord], times_s: np.ndarray) -> np.ndarray:
    """Requests arrived (arrival <= t) and not yet finished (finish > t) at each time t."""
    arrivals = np.sort([r.arrival_s for r in records])
    finishes = np.sort([r.finish_s for r in records])
    arrived = np.searchsorted(arrivals, times_s, side="right")
    finished = np.searchsorted(finishes, times_s, side="right")
    return arrived - finished


def queue_growth(records: Sequence[RequestRecord], *, window_fraction: float = 0.5) -> tuple[float, int]:
    """(least-squares rise of the in-system count, arrivals) over the last window_fraction of arrivals.

    The window is [t_end - window_fraction * (t_end - t_first), t_end] with t_first / t_end the
    first / last arrival: the tail after the last arrival is left out, since the system drains then.
    """
    if not 0 < window_fraction <= 1:
        raise ValueError(f"window_fraction must be in (0, 1], got {window_fraction}")
    if not records:
        raise ValueError("queue_growth needs at least one record")
    first_s = min(r.arrival_s for r in records)
    end_s = max(r.arrival_s for r in records)
    start_s = end_s - window_fraction * (end_s - first_s)
    if end_s <= start_s:  # everything arrived at once: no window to measure a trend over
        return 0.0, len(records)
    grid_s = np.linspace(start_s, end_s, NUM_GRID_POINTS)
    slope_per_s = float(np.polyfit(grid_s, in_system_counts(records, grid_s), 1)[0])
    num_arrivals = sum(1 for r in records if start_s < r.arrival_s <= end_s)
    return slope_per_s * (end_s - start_s), num_arrivals


def queue_is_growing(records: Sequence[RequestRecord], *, window_fraction: float = 0.5) -> bool:
    """True when requests pile up over the second half of the run (see GROWTH_FRACTION_THRESHOLD)."""
    rise, num_arrivals = queue_growth(records, window_fraction=window_fraction)
    return rise > max(GROWTH_FRACTION_THRESHOLD * num_arrivals, MIN_GROWTH_REQUESTS)
