"""`alise bench sim --method capacity`: steady-state capacity and sustainable rate per configuration.

    alise bench sim --method capacity --kv-cache-gb 4 --num-requests 32000 \\
        --configs fcfs:bf16,fcfs:int8,alise:int8:swap

A configuration is policy:kv dtype[:KV offload mode] (gpu_presets.KvDtype, kv_offload.OffloadMode).
For each, on the trace of --seed:

    capacity          closed-loop saturation run (steady_state.closed_loop_capacity)
    rate walk         open-loop Poisson runs at --capacity-fractions of the baseline's capacity (one
                      grid for all), upward, stopping at the first run not sustained under the largest
                      bound (no higher rate could count); each gives the windowed mean normalized
                      latency (steady_state.SteadyStateWindow) and its stability check (an unstable
                      run is not sustained)
    sustainable rate  under each bound (multiples of fcfs-bf16's unloaded mean normalized latency,
                      the same absolute bound for every configuration): sustainable_rate() over the
                      walk, never interpolated toward an unstable run (the last sustained rate then);
                      when the highest swept rate is still sustained, that rate (a lower bound)

Ratios are to the first configuration (the baseline, fcfs:bf16 by default). The scheduler's share
and the memory's share separate as fcfs:int8 / fcfs:bf16 (memory) and alise:int8 / fcfs:int8.

The closed-loop capacity of a shortest-first policy overstates what it sustains: with N requests
kept in the system it serves the short ones and defers the long ones (until the starvation
promotion), so the middle window's completions are skewed short. Its sustainable rate, from the
open-loop walk, is the figure to compare; fcfs's two agree (it defers nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from services.bench.arrivals import arrival_times_s
from services.bench.latency_metrics import Slo, summarize
from services.bench.sim.kv_offload import KvOffloadConfig, OffloadMode
from services.bench.sim.simulator import EngineShape, StepCost, simulate
from services.bench.sim.sweep import _unloaded_mean
from services.bench.steady_state import SteadyStateWindow, closed_loop_capacity, stability
from services.bench.sustainable_rate import RatePoint, sustainable_rate
from services.common.arg_types import comma_list

DEFAULT_CONFIGS = "fcfs:bf16,fcfs:int8,alise:int8:swap"
DEFAULT_CAPACITY_FRACTIONS = (0.9, 1.0, 1.05, 1.1, 1.2, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.4)


@dataclass(frozen=True)
class CapacityConfig:
    """One policy on one KV pool dtype with one offload mode."""

    policy: str
    kv_dtype: str
    offload_mode: str = OffloadMode.RECOMPUTE.value

    @property
    def label(self) -> str:
        suffix = "" if self.offload_mode == OffloadMode.RECOMPUTE.value else f"+{self.offload_mode}"
        return f"{self.policy}-{self.kv_dtype}{suffix}"


def parse_configs(text: str, policies: Sequence[str], dtypes: Sequence[str]) -> tuple[CapacityConfig, ...]:
    configs = []
    for item in comma_list(text, str):
        fields = item.split(":")
        if len(fields) not in (2, 3) or fields[0] not in policies or fields[1] not in dtypes:
            raise ValueError(
                f"bad configuration {item!r}: policy:kv dtype[:offload mode], policies {list(policies)}, "
                f"dtypes {list(dtypes)}"
            )
        configs.append(CapacityConfig(*fields[:2], OffloadMode(fields[2]).value if len(fields) == 3 else "recompute"))
    if not configs or len({c.label for c in configs}) != len(configs):
        raise ValueError(f"configurations must be distinct and non-empty, got {text!r}")
    return tuple(configs)


@dataclass(frozen=True)
class CapacityFigures:
    config: CapacityConfig
    num_kv_blocks: int
    capacity_per_s: float
    points: list[RatePoint]  # the open-loop sweep (queue_growing = flagged unstable)
    sustainable_rate_per_s: dict[str, float]  # by bound multiple ("2x")
    ratio_to_baseline: dict[str, float]  # capacity and each bound, to the first configuration
    num_preemptions: list[int]  # per swept rate, whole run
    num_recomputed_tokens: list[int]


def run_capacity(
    trace,
    predictions,
    configs: Sequence[CapacityConfig],
    *,
    make: Callable[[CapacityConfig], tuple[StepCost, KvOffloadConfig | None]],
    shape: EngineShape,
    bound_multiples: Sequence[float],
    fractions: Sequence[float],
    window: SteadyStateWindow,
    seed: int,
    concurrency: int,
    progress=print,
) -> tuple[float, list[CapacityFigures]]:
    """(fcfs-bf16-style unloaded mean of the first configuration, figures per configuration)."""
    unloaded = _unloaded_mean(trace, predictions, make(configs[0])[0], shape)
    progress(f"unloaded mean normalized latency {unloaded * 1e3:.2f} ms/token ({configs[0].label})")
    figures, baseline_capacity = [], None
    for config in configs:
        cost, offload = make(config)
        closed = simulate(
            trace,
            [0.0] * len(trace),
            predictions,
            policy=config.policy,
            cost=cost,
            shape=shape,
            offload=offload,
            closed_loop_concurrency=concurrency,
        )
        capacity = closed_loop_capacity(closed.records, window)
        baseline_capacity = baseline_capacity or capacity
        progress(f"{config.label:<22} {cost.num_kv_blocks} KV blocks; capacity {capacity:.3f} req/s (closed loop)")
        points, preemptions, recomputed = [], [], []
        largest_bound = max(bound_multiples) * unloaded
        for index, fraction in enumerate(sorted(fractions)):
            if points and not points[-1].is_sustained(largest_bound):
                break
            rate = fraction * baseline_capacity
            arrivals = arrival_times_s(len(trace), rate, seed=seed * 1000 + index)
            result = simulate(
                trace, arrivals, predictions, policy=config.policy, cost=cost, shape=shape, offload=offload
            )
            summary = summarize(window.measured(result.records), slo=Slo())
            check = stability(result.records, window)
            points.append(
                RatePoint(
                    rate,
                    summary.mean_normalized_latency_s_per_token,
                    summary.p99_normalized_latency_s_per_token,
                    not check.is_stable,
                )
            )
            preemptions.append(result.num_preemptions)
            recomputed.append(result.num_recomputed_tokens)
            progress(
                f"  {fraction:5.0%} {rate:7.2f} req/s  normalized mean {points[-1].mean_normalized_latency_s_per_token * 1e3:7.2f}"
                f" p99 {points[-1].p99_normalized_latency_s_per_token * 1e3:8.2f} ms/token  shortfall "
                f"{check.shortfall_fraction:6.2%}{'' if check.is_stable else '  UNSTABLE'}"
            )
        rates = {f"{m:g}x": _sustained(points, m * unloaded) for m in bound_multiples}
        figures.append(
            CapacityFigures(config, cost.num_kv_blocks, capacity, points, rates, {}, preemptions, recomputed)
        )
    return unloaded, _with_ratios(figures)


def _sustained(points: list[RatePoint], bound: float) -> float:
    """sustainable_rate, never interpolated toward an unstable run (whose windowed latency says
    nothing about where the overload began): such a run's mean is capped at the bound, which makes
    sustainable_rate return the last sustained rate. So a looser bound never gives a lower rate."""
    capped = [
        RatePoint(
            p.rate_per_s, min(p.mean_normalized_latency_s_per_token, bound), p.p99_normalized_latency_s_per_token, True
        )
        if p.queue_growing
        else p
        for p in points
    ]
    return sustainable_rate(capped, bound_s_per_token=bound)


def _with_ratios(figures: list[CapacityFigures]) -> list[CapacityFigures]:
    base = figures[0]
    out = []
    for f in figures:
        ratios = {"capacity": f.capacity_per_s / base.capacity_per_s}
        for bound, rate in f.sustainable_rate_per_s.items():
            base_rate = base.sustainable_rate_per_s[bound]
            ratios[bound] = rate / base_rate if base_rate > 0 else float("nan")
        out.append(
            CapacityFigures(
                f.config,
                f.num_kv_blocks,
                f.capacity_per_s,
                f.points,
                f.sustainable_rate_per_s,
                ratios,
                f.num_preemptions,
                f.num_recomputed_tokens,
            )
        )
    return out


def table_lines(figures: list[CapacityFigures]) -> list[str]:
    bounds = list(figures[0].sustainable_rate_per_s)
    lines = [
        "configuration          KV blocks  capacity req/s      "
        + "  ".join(f"sustainable {b} req/s" for b in bounds)
        + "   (ratios to "
        + figures[0].config.label
        + ")"
    ]
    for f in figures:
        rates = "  ".join(f"{f.sustainable_rate_per_s[b]:8.2f} (x{f.ratio_to_baseline[b]:.2f})     " for b in bounds)
        lines.append(
            f"{f.config.label:<22} {f.num_kv_blocks:9d}  {f.capacity_per_s:7.2f} (x{f.ratio_to_baseline['capacity']:.2f})"
            f"    {rates}"
        )
    return lines
