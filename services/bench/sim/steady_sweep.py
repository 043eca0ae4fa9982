"""The steady-state policy comparison (the default of `alise bench sim`; DESIGN.md section 3).

    capacity   per policy and seed: a closed-loop saturation run (capacity_concurrency requests
               always in the system) over the seed's whole trace; completions/s in the middle window
               (steady_state.closed_loop_capacity); mean and t-interval over seeds
    loads      fractions of fcfs's mean capacity (80/90/95/100% by default), so every policy sees the
               same offered rate; one arrival sequence per (seed, load, burstiness), every policy on it
    metrics    over the measured requests only (arrival ranks 10%..90% by default; the run goes on
               until all have finished): slo_metrics.headline_metrics, plus whole-run preemptions
               and recomputed tokens; each run checked for stability (steady_state.stability)
    figures    mean and Student-t interval over seeds; goodput (highest load with >= 90% / 99% in
               SLO, from the seed means, unstable means any seed flagged); alise's share of the
               oracle's gain on each figure

Each seed draws its own trace sample, predictions and arrivals (the workload callback), so the
intervals cover the workload's variation, not only the arrivals'. Deterministic for given seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from services.bench.arrivals import arrival_times_s
from services.bench.sim.kv_offload import KvOffloadConfig
from services.bench.sim.simulator import EngineShape, SimResult, StepCost, simulate
from services.bench.slo_metrics import (
    GOODPUT_TARGETS,
    HeadlineMetrics,
    SloBounds,
    goodput_load,
    headline_metrics,
    oracle_share,
)
from services.bench.steady_state import Estimate, Stability, SteadyStateWindow, closed_loop_capacity, mean_ci, stability
from services.bench.workload import TraceRequest
from services.engine.length_distribution import LengthDistribution

DEFAULT_LOAD_FRACTIONS = (0.8, 0.9, 0.95, 1.0)
POISSON, GAMMA_CV2 = 1.0, 0.25  # gamma shapes: CV = 1 / sqrt(shape)
DEFAULT_SEEDS = (0, 1, 2, 3)
# Figures aggregated over seeds (HeadlineMetrics fields, then the run's counters).
FIGURES = (
    "slo_attainment",
    "p50_ttft_s",
    "p99_ttft_s",
    "max_ttft_s",
    "mean_normalized_latency_s_per_token",
    "p99_normalized_latency_s_per_token",
    "throughput_per_s",
    "preemptions_per_1k",
    "recomputed_tokens_per_request",
)
LOWER_IS_BETTER = (
    "slo_violation",
    "p50_ttft_s",
    "p99_ttft_s",
    "mean_normalized_latency_s_per_token",
    "p99_normalized_latency_s_per_token",
)
ORACLE = "srpt-oracle"

Workload = Callable[[int], tuple[Sequence[TraceRequest], Sequence[LengthDistribution]]]


@dataclass(frozen=True)
class SteadyConfig:
    policies: tuple[str, ...]  # must include fcfs (loads are fractions of its capacity) unless base_capacity_per_s
    load_fractions: tuple[float, ...] = DEFAULT_LOAD_FRACTIONS
    burstiness_values: tuple[float, ...] = (POISSON, GAMMA_CV2)
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    slo: SloBounds = field(default_factory=SloBounds)
    window: SteadyStateWindow = field(default_factory=SteadyStateWindow)
    capacity_concurrency: int = 256  # requests kept in the system by the saturation run
    offload: KvOffloadConfig | None = None  # a swap mode for every run (None: recompute)
    # fcfs's capacity measured by an earlier run (its JSON): no capacity runs, fcfs need not be swept
    base_capacity_per_s: float | None = None

    def __post_init__(self) -> None:
        if "fcfs" not in self.policies and self.base_capacity_per_s is None:
            raise ValueError("the steady-state comparison needs fcfs: loads are fractions of its capacity")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if not self.load_fractions or min(self.load_fractions) <= 0:
            raise ValueError(f"load fractions must be > 0, got {self.load_fractions}")
        if self.capacity_concurrency < 1:
            raise ValueError(f"capacity_concurrency must be >= 1, got {self.capacity_concurrency}")


@dataclass(frozen=True)
class SteadyRun:
    """One policy, one seed, one load and burstiness."""

    policy: str
    burstiness: float
    load_fraction: float
    seed: int
    rate_per_s: float
    metrics: HeadlineMetrics
    stability: Stability
    num_requests: int
    num_preemptions: int  # whole run
    num_recomputed_tokens: int  # whole run: KV tokens computed again after preemption (wasted)

    def figure(self, name: str) -> float:
        if name == "preemptions_per_1k":
            return 1000.0 * self.num_preemptions / self.num_requests
        if name == "recomputed_tokens_per_request":
            return self.num_recomputed_tokens / self.num_requests
        return getattr(self.metrics, name)


@dataclass(frozen=True)
class SteadyPoint:
    """One policy at one load and burstiness, over the seeds."""

    policy: str
    burstiness: float
    load_fraction: float
    rate_per_s: float  # mean over seeds
    figures: dict[str, Estimate]
    num_unstable: int  # seeds whose run was flagged

    @property
    def slo_violation(self) -> float:
        return 1.0 - self.figures["slo_attainment"].mean


@dataclass(frozen=True)
class SteadyResult:
    capacity_per_s: dict[str, Estimate]  # closed-loop capacity per policy
    capacity_by_seed: dict[str, list[float]]
    points: list[SteadyPoint]
    runs: list[SteadyRun]
    goodput_load: dict[str, dict[str, dict[str, float]]]  # burstiness label -> policy -> target -> load
    oracle_share: dict[str, dict[str, dict[str, float | None]]]  # burstiness label -> load -> figure -> share


def burstiness_label(burstiness: float) -> str:
    return "poisson" if burstiness == POISSON else f"gamma-cv{burstiness**-0.5:g}"


def run_steady(
    workload: Workload, *, cost: StepCost, shape: EngineShape, config: SteadyConfig, progress=print
) -> SteadyResult:
    loaded = {seed: workload(seed) for seed in config.seeds}
    by_seed = (
        {}
        if config.base_capacity_per_s
        else {
            policy: [_capacity(*loaded[seed], policy, cost, shape, config) for seed in config.seeds]
            for policy in config.policies
        }
    )
    capacity = {policy: mean_ci(values) for policy, values in by_seed.items()}
    for policy, estimate in capacity.items():
        progress(
            f"capacity {policy:<12} {estimate.mean:8.3f} +- {estimate.half_width:.3f} req/s (closed loop, "
            f"{config.capacity_concurrency} in system)"
        )
    base = config.base_capacity_per_s or capacity["fcfs"].mean
    runs = []
    for burstiness in config.burstiness_values:
        for index, load in enumerate(config.load_fractions):
            for seed in config.seeds:
                trace, predictions = loaded[seed]
                rate = load * base
                arrivals = arrival_times_s(len(trace), rate, seed=arrival_seed(seed, index), burstiness=burstiness)
                for policy in config.policies:
                    result = simulate(
                        trace, arrivals, predictions, policy=policy, cost=cost, shape=shape, offload=config.offload
                    )
                    runs.append(_run(policy, burstiness, load, seed, rate, result, config))
                    progress(_progress_line(runs[-1]))
    points = _points(runs, config)
    return SteadyResult(capacity, by_seed, points, runs, _goodput(points, config), _shares(points, config))


def _capacity(trace, predictions, policy: str, cost: StepCost, shape: EngineShape, config: SteadyConfig) -> float:
    result = simulate(
        trace,
        [0.0] * len(trace),
        predictions,
        policy=policy,
        cost=cost,
        shape=shape,
        offload=config.offload,
        closed_loop_concurrency=config.capacity_concurrency,
    )
    return closed_loop_capacity(result.records, config.window)


def arrival_seed(seed: int, load_index: int) -> int:
    """The arrivals' seed of a workload seed at the load_index-th of --loads: two runs share arrivals only if
    both the seed and the load's place in --loads agree (steady_goals.py checks it), not the rate alone."""
    return seed * 1000 + load_index


def _run(policy: str, burstiness: float, load: float, seed: int, rate: float, result: SimResult, config) -> SteadyRun:
    measured = config.window.measured(result.records)
    return SteadyRun(
        policy,
        burstiness,
        load,
        seed,
        rate,
        headline_metrics(measured, config.slo),
        stability(result.records, config.window),
        len(result.records),
        result.num_preemptions,
        result.num_recomputed_tokens,
    )


def _points(runs: list[SteadyRun], config: SteadyConfig) -> list[SteadyPoint]:
    points = []
    for burstiness in config.burstiness_values:
        for load in config.load_fractions:
            for policy in config.policies:
                own = [r for r in runs if (r.policy, r.burstiness, r.load_fraction) == (policy, burstiness, load)]
                figures = {name: mean_ci([r.figure(name) for r in own]) for name in FIGURES}
                unstable = sum(1 for r in own if not r.stability.is_stable)
                rate = sum(r.rate_per_s for r in own) / len(own)
                points.append(SteadyPoint(policy, burstiness, load, rate, figures, unstable))
    return points


def _goodput(points: list[SteadyPoint], config: SteadyConfig) -> dict[str, dict[str, dict[str, float]]]:
    goodput: dict[str, dict[str, dict[str, float]]] = {}
    for burstiness in config.burstiness_values:
        label = burstiness_label(burstiness)
        goodput[label] = {}
        for policy in config.policies:
            own = sorted(
                (p for p in points if p.policy == policy and p.burstiness == burstiness), key=lambda p: p.load_fraction
            )
            loads = [p.load_fraction for p in own]
            attained = [p.figures["slo_attainment"].mean for p in own]
            stable = [p.num_unstable == 0 for p in own]
            goodput[label][policy] = {f"{t:.0%}": goodput_load(loads, attained, stable, t) for t in GOODPUT_TARGETS}
    return goodput


def _shares(points: list[SteadyPoint], config: SteadyConfig) -> dict[str, dict[str, dict[str, float | None]]]:
    """alise's share of the oracle's gain over fcfs on each lower-is-better figure (needs the three)."""
    if not {"fcfs", "alise", ORACLE} <= set(config.policies):
        return {}
    shares: dict[str, dict[str, dict[str, float | None]]] = {}
    for burstiness in config.burstiness_values:
        label = burstiness_label(burstiness)
        shares[label] = {}
        for load in config.load_fractions:
            at = {p.policy: p for p in points if p.burstiness == burstiness and p.load_fraction == load}
            shares[label][f"{load:g}"] = {
                name: oracle_share(*(_value(at[policy], name) for policy in ("fcfs", "alise", ORACLE)))
                for name in LOWER_IS_BETTER
            }
    return shares


def _value(point: SteadyPoint, name: str) -> float:
    return point.slo_violation if name == "slo_violation" else point.figures[name].mean


def _progress_line(run: SteadyRun) -> str:
    m, s = run.metrics, run.stability
    return (
        f"{burstiness_label(run.burstiness):<11} load {run.load_fraction:5.0%} seed {run.seed} {run.policy:<12}"
        f" SLO miss {m.slo_violation:6.2%}  ttft p50 {m.p50_ttft_s:6.2f} p99 {m.p99_ttft_s:6.2f} s"
        f"  normalized mean {m.mean_normalized_latency_s_per_token * 1e3:7.1f} p99"
        f" {m.p99_normalized_latency_s_per_token * 1e3:7.1f} ms/token  preemptions {run.num_preemptions:5d}"
        f"  recomputed {run.num_recomputed_tokens:8d}  shortfall {s.shortfall_fraction:6.2%} rise {s.rise_fraction:6.2%}"
        f"{'' if s.is_stable else '  UNSTABLE'}"
    )
