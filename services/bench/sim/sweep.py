"""A request-rate sweep of every policy on identical work, and the figures the issue asks for.

    unloaded   fcfs on the first requests of the trace, each alone: the floor of normalized latency
    capacity   fcfs with every request at time 0: the engine's throughput, which sets the rate grid
    sweep      for each rate, one Poisson (or gamma) arrival sequence, every policy on it
    per bound  (2x, 4x, 8x the unloaded mean) the highest sustained rate of each policy, its ratio to
               fcfs, the share of the oracle's gain that alise recovers, and p99 at alise's rate

Policies see the same trace, the same arrival times and the same predictions at each rate, so
differences are the policies' alone. Deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from services.bench.arrivals import arrival_times_s
from services.bench.latency_metrics import LatencySummary, Slo, queue_is_growing, summarize
from services.bench.sim.simulator import EngineShape, SimResult, StepCost, simulate
from services.bench.sustainable_rate import RatePoint, latency_bounds, sustainable_rate
from services.bench.workload import TraceRequest
from services.engine.length_distribution import LengthDistribution

NUM_UNLOADED_REQUESTS = 200  # requests simulated alone for the unloaded latency
UNLOADED_RATE_PER_S = 1e-6  # arrivals so sparse that no two requests overlap
DEFAULT_RATE_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0)  # of the measured capacity


@dataclass(frozen=True)
class SweepConfig:
    policies: tuple[str, ...]
    rates_per_s: tuple[float, ...]  # empty = DEFAULT_RATE_FRACTIONS of the measured capacity
    burstiness: float  # gamma shape of inter-arrival gaps; 1 = Poisson
    bound_multiples: tuple[float, ...]  # latency bounds as multiples of the unloaded mean
    slo_multiple: float  # goodput SLO: normalized latency <= this multiple of the unloaded mean
    seed: int


@dataclass(frozen=True)
class PolicyPoint:
    """One policy at one rate."""

    policy: str
    rate_per_s: float
    summary: LatencySummary
    queue_growing: bool
    num_preemptions: int
    num_recomputed_tokens: int
    kv_swap_bytes: int
    max_wait_s: float

    def rate_point(self) -> RatePoint:
        return RatePoint(
            self.rate_per_s,
            self.summary.mean_normalized_latency_s_per_token,
            self.summary.p99_normalized_latency_s_per_token,
            self.queue_growing,
        )


@dataclass(frozen=True)
class BoundFigures:
    """Sustainable rates under one latency bound."""

    multiple: float  # of the unloaded mean normalized latency
    bound_s_per_token: float
    sustainable_rate_per_s: dict[str, float]  # by policy
    ratio_to_fcfs: dict[str, float]  # by policy
    oracle_gain_recovered: float | None  # (alise - fcfs) / (oracle - fcfs); None without both
    p99_at_alise_rate_s_per_token: dict[str, float] = field(default_factory=dict)  # alise and fcfs


@dataclass(frozen=True)
class SweepResult:
    unloaded_mean_s_per_token: float
    capacity_per_s: float  # fcfs throughput with all requests at once
    points: list[PolicyPoint]
    bounds: list[BoundFigures]


def run_sweep(
    trace: Sequence[TraceRequest],
    predictions: Sequence[LengthDistribution],
    *,
    cost: StepCost,
    shape: EngineShape,
    config: SweepConfig,
    progress=print,
) -> SweepResult:
    unloaded = _unloaded_mean(trace, predictions, cost, shape)
    capacity = _capacity(trace, predictions, cost, shape)
    progress(f"unloaded mean normalized latency {unloaded * 1e3:.2f} ms/token; capacity {capacity:.3f} req/s")
    rates = config.rates_per_s or tuple(round(capacity * f, 4) for f in DEFAULT_RATE_FRACTIONS)
    slo = Slo(max_normalized_latency_s_per_token=config.slo_multiple * unloaded)
    points = []
    for index, rate in enumerate(rates):
        arrivals = arrival_times_s(len(trace), rate, seed=config.seed + index, burstiness=config.burstiness)
        for policy in config.policies:
            result = simulate(trace, arrivals, predictions, policy=policy, cost=cost, shape=shape)
            point = _point(policy, rate, result, slo)
            points.append(point)
            progress(_progress_line(point))
    bounds = [_bound_figures(points, config.policies, m, m * unloaded) for m in config.bound_multiples]
    return SweepResult(unloaded, capacity, points, bounds)


def _unloaded_mean(trace, predictions, cost, shape) -> float:
    head = list(trace[:NUM_UNLOADED_REQUESTS])
    arrivals = arrival_times_s(len(head), UNLOADED_RATE_PER_S, seed=0)
    result = simulate(head, arrivals, predictions[: len(head)], policy="fcfs", cost=cost, shape=shape)
    return summarize(result.records, slo=Slo()).mean_normalized_latency_s_per_token


def _capacity(trace, predictions, cost, shape) -> float:
    arrivals = [0.0] * len(trace)
    result = simulate(trace, arrivals, predictions, policy="fcfs", cost=cost, shape=shape)
    return len(result.records) / result.busy_s


def _point(policy: str, rate: float, result: SimResult, slo: Slo) -> PolicyPoint:
    return PolicyPoint(
        policy, rate, summarize(result.records, slo=slo), queue_is_growing(result.records),
        result.num_preemptions, result.num_recomputed_tokens, result.kv_swap_bytes, result.max_wait_s,
    )


def _progress_line(point: PolicyPoint) -> str:
    s = point.summary
    return (
        f"rate {point.rate_per_s:8.3f}/s {point.policy:<12} normalized mean {s.mean_normalized_latency_s_per_token * 1e3:9.2f}"
        f" p99 {s.p99_normalized_latency_s_per_token * 1e3:9.2f} ms/token  ttft p99 {s.p99_ttft_s:7.2f} s"
        f"  preemptions {point.num_preemptions:5d}  max wait {point.max_wait_s:6.1f} s"
        f"{'  queue growing' if point.queue_growing else ''}"
    )


def _bound_figures(points: list[PolicyPoint], policies, multiple: float, bound: float) -> BoundFigures:
    rates = {
        policy: sustainable_rate([p.rate_point() for p in points if p.policy == policy], bound_s_per_token=bound)
        for policy in policies
    }
    fcfs = rates.get("fcfs", 0.0)
    ratios = {policy: (rate / fcfs if fcfs > 0 else math.inf) for policy, rate in rates.items()}
    recovered = None
    if {"fcfs", "alise", "srpt-oracle"} <= set(rates) and rates["srpt-oracle"] > fcfs:
        recovered = (rates["alise"] - fcfs) / (rates["srpt-oracle"] - fcfs)
    p99 = {}
    if "alise" in rates:
        p99 = {policy: _p99_at(points, policy, rates["alise"]) for policy in ("alise", "fcfs") if policy in rates}
    return BoundFigures(multiple, bound, rates, ratios, recovered, p99)


def _p99_at(points: list[PolicyPoint], policy: str, rate: float) -> float:
    """p99 normalized latency of `policy` at the swept rate nearest `rate`, from below if possible."""
    own = sorted((p for p in points if p.policy == policy), key=lambda p: p.rate_per_s)
    below = [p for p in own if p.rate_per_s <= rate + 1e-9]
    chosen = below[-1] if below else own[0]
    return chosen.summary.p99_normalized_latency_s_per_token
