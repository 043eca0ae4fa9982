"""What `alise bench serve` prints and saves: a line per rate point, sustainable rates, JSON, PNG."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict
from typing import Any

from services.bench.serve_config import ServeConfig
from services.bench.serve_run import ServeOutcome
from services.bench.serve_sweep import RateRun
from services.bench.sustainable_rate import sustainable_rate

BASELINE_POLICY = "fcfs"  # ratios are against it when it ran, else against the first policy

RUN_HEADER = (
    f"{'policy':<12} {'rate/s':>7} {'req/s':>6} {'tok/s':>7} {'norm mean':>9} {'p50':>7} {'p99':>8} "
    f"{'ttft p99':>8} {'goodput':>7} {'preempt':>7} {'slo %':>6} {'stable':>6} {'fail':>4} {'lag p99':>7} {'cli cpu':>7}"
)


def format_run(policy: str, run: RateRun) -> str:
    """One table row; latencies in ms/token and s, send lag in ms. A '!' marks a client bottleneck.
    Latencies and SLO attainment are over the measured window (warm-up and drain left out, serve_steady.py)."""
    s = run.summary
    flag = " !" if run.client_bottleneck else ""
    if s is None:
        figures = f"{'-':>6} {'-':>7} {'-':>9} {'-':>7} {'-':>8} {'-':>8} {'-':>7} {'-':>7}"
    else:
        figures = (
            f"{s.request_throughput_per_s:6.2f} {s.output_token_throughput_per_s:7.1f} "
            f"{s.mean_normalized_latency_s_per_token * 1e3:9.1f} {s.p50_normalized_latency_s_per_token * 1e3:7.1f} "
            f"{s.p99_normalized_latency_s_per_token * 1e3:8.1f} {s.p99_ttft_s:8.2f} {s.goodput_per_s:7.2f} "
            f"{s.num_preemptions:7d}"
        )
    attainment = f"{run.steady.headline.slo_attainment * 100:6.1f}" if run.steady else f"{'-':>6}"
    return (
        f"{policy:<12} {run.rate_per_s:7.2f} {figures} {attainment} {'yes' if run.is_stable else 'NO':>6} "
        f"{run.num_failed:4d} "
        f"{run.client.p99_send_lag_s * 1e3:7.1f} {run.client.max_cpu_utilization:7.2f}{flag}"
    )


def sustainable_table(outcome: ServeOutcome, config: ServeConfig) -> list[dict[str, Any]]:
    """Per policy and bound: the sustainable rate, and its ratio to the baseline policy's."""
    measured = [result for result in outcome.results if result.error is None]
    names = [result.policy for result in measured]
    baseline = BASELINE_POLICY if BASELINE_POLICY in names else names[0]
    rows = []
    for multiple, bound in zip(config.bound_multiples, outcome.bounds_s_per_token):
        rates = {
            result.policy: sustainable_rate([run.point() for run in result.runs], bound_s_per_token=bound)
            for result in measured
        }
        for policy, rate in rates.items():
            base = rates[baseline]
            rows.append(
                {
                    "policy": policy,
                    "bound_multiple": multiple,
                    "bound_s_per_token": bound,
                    "sustainable_rate_per_s": rate,
                    "ratio_to_baseline": rate / base if base > 0 else math.nan,
                    "baseline": baseline,
                    "sustained_whole_sweep": rate == max(outcome.rates_per_s),  # the true rate may be higher
                }
            )
    return rows


def format_sustainable(rows: list[dict[str, Any]]) -> str:
    lines = ["sustainable rate under mean normalized latency bound (x unloaded):"]
    for row in rows:
        ratio = row["ratio_to_baseline"]
        versus = f"{row['baseline']} sustained none" if math.isnan(ratio) else f"x{ratio:.2f} vs {row['baseline']}"
        lines.append(
            f"  {row['policy']:<12} {row['bound_multiple']:g}x = {row['bound_s_per_token'] * 1e3:8.1f} ms/token: "
            f"{'>=' if row['sustained_whole_sweep'] else '  '}{row['sustainable_rate_per_s']:6.2f} req/s  ({versus})"
        )
    return "\n".join(lines)


def figures(outcome: ServeOutcome, config: ServeConfig, sustainable: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures part of the JSON report (the header comes from results.build_report)."""
    trace = outcome.trace
    return {
        "trace_stats": {
            "num_requests": len(trace),
            "mean_prompt_tokens": statistics.fmean(r.num_prompt_tokens for r in trace),
            "mean_output_tokens": statistics.fmean(r.num_output_tokens for r in trace),
            "max_output_tokens": max(r.num_output_tokens for r in trace),
        },
        "reference_unloaded_mean_s_per_token": outcome.reference_unloaded_s_per_token,
        "bounds": [
            {"multiple": multiple, "bound_s_per_token": bound}
            for multiple, bound in zip(config.bound_multiples, outcome.bounds_s_per_token)
        ],
        "slo": asdict(outcome.slo),
        "policies": {
            result.policy: {
                "unloaded_mean_s_per_token": result.unloaded_mean_s_per_token,
                "runs": result.runs,
                "error": result.error,
            }
            for result in outcome.results
        },
        "sustainable": sustainable,
        "rates_per_s": list(outcome.rates_per_s),
        "capacity": outcome.capacity,  # the first policy's closed-loop probe (--capacity-concurrency), or None
        "client_bottleneck_suspected": any(run.client_bottleneck for r in outcome.results for run in r.runs),
    }
