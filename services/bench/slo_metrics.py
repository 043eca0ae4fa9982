"""The headline metrics of a steady-state run (DESIGN.md section 3), and the figures across loads.

    SLO attainment   share of measured requests with TTFT <= ttft bound AND TPOT <= tpot bound
                     (DistServe's definition; defaults 1 s and 100 ms, flags of `alise bench sim`)
    goodput          the highest load (fraction of fcfs's capacity) whose attainment is >= a target
                     (90%, 99%), walking the loads upward and stopping at the first that misses it or
                     is unstable; linear between that load and the last one that met it
    oracle share     (fcfs - alise) / (fcfs - oracle) of a lower-is-better figure: the share of the
                     oracle's gain over fcfs that alise keeps (None when the oracle gains less than
                     5% of fcfs's figure: the ratio of two noise terms means nothing)

Only the measured requests (steady_state.SteadyStateWindow) enter the latency figures; preemptions
and recomputed tokens are whole-run counters of the scheduler (they cannot be attributed to a
window), reported per 1,000 requests of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from services.bench.latency_metrics import RequestRecord

DEFAULT_TTFT_BOUND_S = 1.0
DEFAULT_TPOT_BOUND_S = 0.1
GOODPUT_TARGETS = (0.90, 0.99)
MIN_ORACLE_GAIN_FRACTION = 0.05  # an oracle gain under 5% of fcfs's figure is noise: no share


@dataclass(frozen=True)
class SloBounds:
    """DistServe's per-request SLO: both bounds must hold."""

    ttft_s: float = DEFAULT_TTFT_BOUND_S
    tpot_s: float = DEFAULT_TPOT_BOUND_S

    def __post_init__(self) -> None:
        if not (self.ttft_s > 0 and self.tpot_s > 0):
            raise ValueError(f"SLO bounds must be > 0, got ttft {self.ttft_s} s, tpot {self.tpot_s} s")

    def is_met_by(self, record: RequestRecord) -> bool:
        return record.ttft_s <= self.ttft_s and record.tpot_s <= self.tpot_s


@dataclass(frozen=True)
class HeadlineMetrics:
    """One policy, one load, one seed: figures over the measured requests."""

    num_measured: int
    slo_attainment: float  # share meeting both SLO bounds
    p50_ttft_s: float
    p99_ttft_s: float
    max_ttft_s: float
    mean_normalized_latency_s_per_token: float
    p99_normalized_latency_s_per_token: float
    throughput_per_s: float  # measured requests / (last measured finish - first measured arrival)

    @property
    def slo_violation(self) -> float:
        return 1.0 - self.slo_attainment


def headline_metrics(measured: Sequence[RequestRecord], slo: SloBounds) -> HeadlineMetrics:
    if not measured:
        raise ValueError("headline_metrics needs at least one measured request")
    ttft = np.array([r.ttft_s for r in measured])
    normalized = np.array([r.normalized_latency_s_per_token for r in measured])
    span_s = max(r.finish_s for r in measured) - min(r.arrival_s for r in measured)
    return HeadlineMetrics(
        num_measured=len(measured),
        slo_attainment=sum(1 for r in measured if slo.is_met_by(r)) / len(measured),
        p50_ttft_s=float(np.percentile(ttft, 50)),
        p99_ttft_s=float(np.percentile(ttft, 99)),
        max_ttft_s=float(ttft.max()),
        mean_normalized_latency_s_per_token=float(normalized.mean()),
        p99_normalized_latency_s_per_token=float(np.percentile(normalized, 99)),
        throughput_per_s=len(measured) / span_s if span_s > 0 else math.nan,
    )


def goodput_load(loads: Sequence[float], attainments: Sequence[float], stable: Sequence[bool], target: float) -> float:
    """Highest load meeting `target` attainment (see the module docstring); 0.0 when the lowest misses.
    Attainment is interpolated only between two stable loads; the highest swept load is returned
    when every load meets the target (the true goodput may then be higher: a lower bound)."""
    if not (len(loads) == len(attainments) == len(stable)) or not loads:
        raise ValueError("loads, attainments and stable must have the same non-zero length")
    order = sorted(range(len(loads)), key=lambda i: loads[i])
    last = None
    for i in order:
        if stable[i] and attainments[i] >= target:
            last = i
            continue
        if last is None:
            return 0.0
        if not stable[i]:
            return loads[last]
        fraction = (attainments[last] - target) / (attainments[last] - attainments[i])
        return loads[last] + fraction * (loads[i] - loads[last])
    return 0.0 if last is None else loads[last]


def oracle_share(fcfs: float, alise: float, oracle: float) -> float | None:
    """Share of the oracle's gain over fcfs that alise keeps, for a lower-is-better figure."""
    gain = fcfs - oracle
    if not all(map(math.isfinite, (fcfs, alise, oracle))) or not gain > MIN_ORACLE_GAIN_FRACTION * abs(fcfs):
        return None
    return (fcfs - alise) / gain
