"""Steady-state measurement (DESIGN.md section 3): a window of arrivals, a stability check, CIs.

A finite trace has a warm-up (the system starts empty) and a drain (arrivals stop, the queue
empties, and a shortest-first policy finishes the long jobs it held back where nothing counts
them). Neither is the steady state, so:

    measured requests  the ones whose arrival rank is in [warmup_fraction * n, (1 - drain_fraction) * n)
                       (arrival order); the run goes on until every request, these included, has
                       finished, and the arrivals of the last drain_fraction keep the load on while
                       the measured ones complete
    measured window    [arrival of the first measured request, arrival of the last one]

A run is *stable* when, over the measured window, both
    shortfall = (arrivals - completions) / arrivals          <= MAX_SHORTFALL_FRACTION (2%)
    rise      = least-squares rise of the in-system count / arrivals  <= MAX_RISE_FRACTION (2%)
(completions: requests of any rank finishing inside the window). An overload of x% over a window of
A arrivals leaves about x/(1+x) * A requests unfinished, so 5% overload reads as a ~4.8% shortfall
and rise; at 100% load a critically loaded queue random-walks and may be flagged either way, which
is what 100% means.

Capacity (closed_loop_capacity): a closed-loop saturation run keeps N requests in the system over a
long trace (simulator.simulate(closed_loop_concurrency=N)); capacity = completions per second
between the completions of rank warmup_fraction * n and (1 - drain_fraction) * n, i.e. the middle
window of the completions, where the system is full.

Across seeds a figure is reported as its mean and a Student-t confidence interval (mean_ci).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from services.bench.latency_metrics import RequestRecord, in_system_counts

DEFAULT_WARMUP_FRACTION = 0.1
DEFAULT_DRAIN_FRACTION = 0.1
MAX_SHORTFALL_FRACTION = 0.02
MAX_RISE_FRACTION = 0.02
NUM_GRID_POINTS = 256  # samples of the in-system count over the window for the rise's fit
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class SteadyStateWindow:
    """Which arrivals count: the middle of the trace, by arrival rank."""

    warmup_fraction: float = DEFAULT_WARMUP_FRACTION
    drain_fraction: float = DEFAULT_DRAIN_FRACTION

    def __post_init__(self) -> None:
        if not (0 <= self.warmup_fraction < 1 and 0 <= self.drain_fraction < 1):
            raise ValueError(f"fractions must be in [0, 1), got {self.warmup_fraction}, {self.drain_fraction}")
        if self.warmup_fraction + self.drain_fraction >= 1:
            raise ValueError("warmup_fraction + drain_fraction must be < 1: nothing would be measured")

    def bounds(self, num_requests: int) -> tuple[int, int]:
        """[first, end) ranks of the measured requests among num_requests."""
        first = math.floor(self.warmup_fraction * num_requests)
        end = math.ceil((1 - self.drain_fraction) * num_requests)
        return first, max(end, first + 1)

    def measured(self, records: Sequence[RequestRecord]) -> list[RequestRecord]:
        """The records whose arrival rank is in the window (ties keep the given order)."""
        if not records:
            raise ValueError("no records to measure")
        by_arrival = sorted(records, key=lambda record: record.arrival_s)
        first, end = self.bounds(len(by_arrival))
        return by_arrival[first:end]


@dataclass(frozen=True)
class Stability:
    """Did completions keep up with arrivals over the measured window?"""

    window_start_s: float
    window_end_s: float
    num_arrivals: int  # arrivals in (start, end]
    num_completions: int  # finishes in (start, end], any request
    shortfall_fraction: float  # (arrivals - completions) / arrivals
    rise_fraction: float  # least-squares rise of the in-system count / arrivals

    @property
    def is_stable(self) -> bool:
        return self.shortfall_fraction <= MAX_SHORTFALL_FRACTION and self.rise_fraction <= MAX_RISE_FRACTION


def stability(records: Sequence[RequestRecord], window: SteadyStateWindow = SteadyStateWindow()) -> Stability:
    """The check of the module docstring; `records` must hold every request of the run (all finished)."""
    measured = window.measured(records)
    start_s, end_s = measured[0].arrival_s, measured[-1].arrival_s
    arrivals = np.array([r.arrival_s for r in records])
    finishes = np.array([r.finish_s for r in records])
    num_arrivals = int(np.count_nonzero((arrivals > start_s) & (arrivals <= end_s)))
    num_completions = int(np.count_nonzero((finishes > start_s) & (finishes <= end_s)))
    if end_s <= start_s or num_arrivals == 0:  # everything arrived at once: no window to judge
        return Stability(start_s, end_s, num_arrivals, num_completions, 0.0, 0.0)
    grid_s = np.linspace(start_s, end_s, NUM_GRID_POINTS)
    slope_per_s = float(np.polyfit(grid_s, in_system_counts(records, grid_s), 1)[0])
    return Stability(
        start_s,
        end_s,
        num_arrivals,
        num_completions,
        (num_arrivals - num_completions) / num_arrivals,
        slope_per_s * (end_s - start_s) / num_arrivals,
    )


def closed_loop_capacity(records: Sequence[RequestRecord], window: SteadyStateWindow = SteadyStateWindow()) -> float:
    """Completions per second over the middle window of a closed-loop run's completions."""
    finishes = np.sort([r.finish_s for r in records])
    first, end = window.bounds(len(finishes))
    if end - first < 2 or finishes[end - 1] <= finishes[first]:
        raise ValueError("too few distinct completions to measure a capacity")
    return (end - 1 - first) / float(finishes[end - 1] - finishes[first])


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds and the half-width of its confidence interval (nan with one seed)."""

    mean: float
    half_width: float
    num_samples: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """Student-t interval of the mean: mean +- t_{(1+c)/2, n-1} * s / sqrt(n)."""
    if not values:
        raise ValueError("mean_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    sample = np.asarray(values, dtype=np.float64)
    mean = float(sample.mean())
    if len(sample) < 2:
        return Estimate(mean, math.nan, 1)
    spread = float(sample.std(ddof=1)) / math.sqrt(len(sample))
    return Estimate(mean, float(stats.t.ppf((1 + confidence) / 2, len(sample) - 1)) * spread, len(sample))
