"""A request-rate sweep of every policy on identical work, and the figures the issue asks for.

    unloaded   fcfs on the first requests of the trace, each alone: the floor of normalized latency
    capacity   fcfs with every request at time 0: the engine's throughput, which sets the rate grid
    sweep      for each rate, one Poisson (or gamma) arrival sequence, every policy on it
    per bound  (2x, 4x, 8x the unloaded mean) the highest sustained rate of each policy, its ratio to
               fcfs, the share of the oracle's gain that alise recovers, and p99 at alise's rate

KV offload modes (kv_offload.py) multiply the runs: each (policy, mode) pair is one curve, labelled
"policy+mode" when more than recompute is swept, and each swap mode's rate is also given as a ratio
to the same policy recomputing (issue 5's figure). Policies and modes see the same trace, the same
arrival times and the same predictions at each rate, so differences are theirs alone. Deterministic
for a seed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

from services.bench.arrivals import arrival_times_s
from services.bench.latency_metrics import LatencySummary, Slo, queue_is_growing, summarize
from services.bench.sim.kv_offload import KvOffloadConfig, OffloadCounters, OffloadMode
from services.bench.sim.simulator import EngineShape, SimResult, StepCost, simulate
from services.bench.sustainable_rate import RatePoint, sustainable_rate
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
    offload_modes: tuple[str, ...] = (OffloadMode.RECOMPUTE.value,)  # OFFLOAD_MODES values, each one curve per policy
    offload: KvOffloadConfig | None = None  # host tier settings of the swap modes (its mode is replaced per run)

    def __post_init__(self) -> None:
        modes = [OffloadMode(mode) for mode in self.offload_modes]  # ValueError names an unknown one
        if not modes or len(set(modes)) != len(modes):
            raise ValueError(f"offload_modes must be distinct and non-empty, got {self.offload_modes}")
        if self.offload is None and any(mode is not OffloadMode.RECOMPUTE for mode in modes):
            raise ValueError("a swap offload mode needs the host tier settings (offload)")

    def label(self, policy: str, mode: str) -> str:
        """The curve's name: the policy alone when only recompute is swept, else policy+mode."""
        return policy if self.offload_modes == (OffloadMode.RECOMPUTE.value,) else f"{policy}+{mode}"

    def offload_of(self, mode: str) -> KvOffloadConfig | None:
        if mode == OffloadMode.RECOMPUTE.value:
            return None
        return dataclasses.replace(self.offload, mode=OffloadMode(mode))


@dataclass(frozen=True)
class PolicyPoint:
    """One policy, in one KV offload mode, at one rate."""

    policy: str
    rate_per_s: float
    summary: LatencySummary
    queue_growing: bool
    num_preemptions: int
    num_recomputed_tokens: int  # KV tokens computed again after preemption (or after a drop)
    kv_swap_bytes: int  # bytes swapped out to the host tier
    max_wait_s: float
    kv_offload: str = OffloadMode.RECOMPUTE.value  # the offload mode
    label: str = ""  # the curve's name (SweepConfig.label)
    offload: OffloadCounters | None = None  # host tier counters (swap modes)

    def rate_point(self) -> RatePoint:
        return RatePoint(
            self.rate_per_s,
            self.summary.mean_normalized_latency_s_per_token,
            self.summary.p99_normalized_latency_s_per_token,
            self.queue_growing,
        )


@dataclass(frozen=True)
class BoundFigures:
    """Sustainable rates under one latency bound; dicts by curve label unless said otherwise."""

    multiple: float  # of the unloaded mean normalized latency
    bound_s_per_token: float
    sustainable_rate_per_s: dict[str, float]
    ratio_to_fcfs: dict[str, float]  # to fcfs in the same offload mode
    # By offload mode: (alise - fcfs) / (oracle - fcfs); None without the three policies.
    oracle_gain_recovered: dict[str, float | None]
    p99_at_alise_rate_s_per_token: dict[str, float] = field(default_factory=dict)  # alise and fcfs, per mode
    ratio_to_recompute: dict[str, float] = field(default_factory=dict)  # swap modes: to the same policy recomputing


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
            for mode in config.offload_modes:
                result = simulate(
                    trace, arrivals, predictions, policy=policy, cost=cost, shape=shape, offload=config.offload_of(mode)
                )
                point = _point(policy, mode, config.label(policy, mode), rate, result, slo)
                points.append(point)
                progress(_progress_line(point))
    bounds = [_bound_figures(points, config, m, m * unloaded) for m in config.bound_multiples]
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


def _point(policy: str, mode: str, label: str, rate: float, result: SimResult, slo: Slo) -> PolicyPoint:
    return PolicyPoint(
        policy,
        rate,
        summarize(result.records, slo=slo),
        queue_is_growing(result.records),
        result.num_preemptions,
        result.num_recomputed_tokens,
        result.kv_swap_bytes,
        result.max_wait_s,
        mode,
        label,
        result.offload,
    )


def _progress_line(point: PolicyPoint) -> str:
    s = point.summary
    return (
        f"rate {point.rate_per_s:8.3f}/s {point.label:<26}"
        f" normalized mean {s.mean_normalized_latency_s_per_token * 1e3:9.2f}"
        f" p99 {s.p99_normalized_latency_s_per_token * 1e3:9.2f} ms/token  ttft p99 {s.p99_ttft_s:7.2f} s"
        f"  preemptions {point.num_preemptions:5d}  recomputed {point.num_recomputed_tokens:8d} tokens"
        f"  max wait {point.max_wait_s:6.1f} s{_offload_text(point.offload)}"
        f"{'  queue growing' if point.queue_growing else ''}"
    )


def _offload_text(counters: OffloadCounters | None) -> str:
    if counters is None:
        return ""
    swaps = "/".join(str(n) for n in counters.num_swaps_by_codec.values())
    stall_s = counters.swap_out_stall_s + counters.swap_in_stall_s
    return (
        f"  swaps {'/'.join(counters.num_swaps_by_codec)} {swaps}  drops {counters.num_dropped}"
        f"  swapped out {counters.swap_out_bytes / 1e9:.1f} GB  stall {stall_s:.2f} s"
    )


def _bound_figures(points: list[PolicyPoint], config: SweepConfig, multiple: float, bound: float) -> BoundFigures:
    rates, ratios, recovered, p99 = {}, {}, {}, {}
    for mode in config.offload_modes:
        own = {policy: config.label(policy, mode) for policy in config.policies}
        mode_rates = {
            policy: sustainable_rate([p.rate_point() for p in points if p.label == label], bound_s_per_token=bound)
            for policy, label in own.items()
        }
        fcfs = mode_rates.get("fcfs", 0.0)
        for policy, rate in mode_rates.items():
            rates[own[policy]] = rate
            ratios[own[policy]] = _ratio(rate, fcfs)
        recovered[mode] = _recovered(mode_rates)
        if "alise" in mode_rates:
            for policy in ("alise", "fcfs"):
                if policy in own:
                    p99[own[policy]] = _p99_at(points, own[policy], mode_rates["alise"])
    return BoundFigures(multiple, bound, rates, ratios, recovered, p99, _ratios_to_recompute(rates, config))


def _ratios_to_recompute(rates: dict[str, float], config: SweepConfig) -> dict[str, float]:
    """Each swap mode's rate over the same policy's recompute rate (empty when recompute is not swept)."""
    recompute = OffloadMode.RECOMPUTE.value
    if recompute not in config.offload_modes:
        return {}
    ratios = {}
    for policy in config.policies:
        base = rates[config.label(policy, recompute)]
        for mode in config.offload_modes:
            if mode != recompute:
                label = config.label(policy, mode)
                ratios[label] = _ratio(rates[label], base)
    return ratios


def _ratio(rate: float, base: float) -> float:
    """rate / base; inf when only the base is 0, nan when both are (nothing sustained: no ratio)."""
    if base > 0:
        return rate / base
    return math.inf if rate > 0 else math.nan


def _recovered(rates: dict[str, float]) -> float | None:
    """Share of the oracle's gain over fcfs that alise keeps; None without the three or no gain."""
    if not {"fcfs", "alise", "srpt-oracle"} <= set(rates) or rates["srpt-oracle"] <= rates["fcfs"]:
        return None
    return (rates["alise"] - rates["fcfs"]) / (rates["srpt-oracle"] - rates["fcfs"])


def _p99_at(points: list[PolicyPoint], label: str, rate: float) -> float:
    """p99 normalized latency of the `label` curve at the swept rate nearest `rate`, from below if possible."""
    own = sorted((p for p in points if p.label == label), key=lambda p: p.rate_per_s)
    below = [p for p in own if p.rate_per_s <= rate + 1e-9]
    chosen = below[-1] if below else own[0]
    return chosen.summary.p99_normalized_latency_s_per_token
