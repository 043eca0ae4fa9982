"""Tables and the figure of a steady-state comparison (steady_sweep.py).

The table: one row per (arrivals, load, policy) with the seed mean +- the t-interval half-width.
The PNG: one row of panels per arrival process, columns SLO violations (%), p99 TTFT (s) and p99
normalized latency (ms/token) against the load, one line per policy with the interval as error
bars; a hollow marker where any seed's run was flagged unstable. matplotlib, Agg backend.
"""

from __future__ import annotations

import math
import pathlib

from services.bench.sim.steady_sweep import SteadyConfig, SteadyPoint, SteadyResult, burstiness_label

PANELS = (
    ("slo_attainment", "requests missing the SLO (%)", lambda v: 100.0 * (1.0 - v)),
    ("p99_ttft_s", "p99 TTFT (s)", lambda v: v),
    ("p99_normalized_latency_s_per_token", "p99 normalized latency (ms/token)", lambda v: 1e3 * v),
)


def _pm(point: SteadyPoint, name: str, scale: float, digits: int) -> str:
    estimate = point.figures[name]
    half = "" if math.isnan(estimate.half_width) else f" +-{abs(scale) * estimate.half_width:.{digits}f}"
    return f"{scale * estimate.mean:.{digits}f}{half}"


def table_lines(result: SteadyResult, config: SteadyConfig) -> list[str]:
    lines = [
        f"SLO: TTFT <= {config.slo.ttft_s:g} s and TPOT <= {config.slo.tpot_s * 1e3:g} ms; mean +- 95% t-interval "
        f"over {len(config.seeds)} seeds; measured arrivals {config.window.warmup_fraction:.0%}.."
        f"{1 - config.window.drain_fraction:.0%}",
        "arrivals    load  policy       req/s   SLO miss %      TTFT p50 s     TTFT p99 s      p99 norm ms/tok"
        "   mean norm ms/tok  preempt/1k  recomputed/req  unstable",
    ]
    for p in result.points:
        violation = p.figures["slo_attainment"]
        miss = f"{100 * (1 - violation.mean):.2f}" + (
            "" if math.isnan(violation.half_width) else f" +-{100 * violation.half_width:.2f}"
        )
        lines.append(
            f"{burstiness_label(p.burstiness):<11} {p.load_fraction:4.0%}  {p.policy:<12} {p.rate_per_s:6.2f}  {miss:<14}"
            f" {_pm(p, 'p50_ttft_s', 1, 2):<14} {_pm(p, 'p99_ttft_s', 1, 2):<15} "
            f"{_pm(p, 'p99_normalized_latency_s_per_token', 1e3, 1):<17} "
            f"{_pm(p, 'mean_normalized_latency_s_per_token', 1e3, 1):<17} "
            f"{p.figures['preemptions_per_1k'].mean:9.0f}  {p.figures['recomputed_tokens_per_request'].mean:13.0f}"
            f"   {p.num_unstable}/{len(config.seeds)}"
        )
    lines.append(
        "goodput (highest load, fraction of fcfs capacity, with >= target in SLO; the last swept load is a "
        "lower bound):"
    )
    for label, by_policy in result.goodput_load.items():
        for policy, by_target in by_policy.items():
            lines.append(f"  {label:<11} {policy:<12} " + "  ".join(f">= {t}: {v:.1%}" for t, v in by_target.items()))
    lines.extend(_share_lines(result))
    return lines


def _share_lines(result: SteadyResult) -> list[str]:
    if not result.oracle_share:
        return []
    lines = ["alise's share of the oracle's gain over fcfs (slo_violation, ttft p50/p99, normalized mean/p99):"]
    for label, by_load in result.oracle_share.items():
        for load, shares in by_load.items():
            text = "  ".join("-" if v is None else f"{v:.0%}" for v in shares.values())
            lines.append(f"  {label:<11} load {float(load):4.0%}: {text}")
    return lines


def plot_steady(result: SteadyResult, config: SteadyConfig, *, title: str, path: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = config.burstiness_values
    figure, axes = plt.subplots(len(rows), len(PANELS), figsize=(5 * len(PANELS), 3.6 * len(rows)), squeeze=False)
    for row, burstiness in enumerate(rows):
        for column, (name, label, transform) in enumerate(PANELS):
            axis = axes[row][column]
            for policy in config.policies:
                own = sorted(
                    (p for p in result.points if p.policy == policy and p.burstiness == burstiness),
                    key=lambda p: p.load_fraction,
                )
                xs = [100 * p.load_fraction for p in own]
                ys = [transform(p.figures[name].mean) for p in own]
                errors = [
                    0.0
                    if math.isnan(p.figures[name].half_width)
                    else abs(
                        transform(p.figures[name].mean + p.figures[name].half_width) - transform(p.figures[name].mean)
                    )
                    for p in own
                ]
                line = axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=policy)
                hollow = [(x, y) for x, y, p in zip(xs, ys, own, strict=True) if p.num_unstable]
                if hollow:
                    axis.plot(*zip(*hollow, strict=True), "o", mfc="white", color=line[0].get_color(), markersize=9)
            axis.set_xlabel("load (% of fcfs capacity)")
            axis.set_ylabel(label)
            if name == "slo_attainment":  # 0% misses happen: linear below 0.1%
                axis.set_yscale("symlog", linthresh=0.1)
            else:
                axis.set_yscale("log")
            axis.set_title(burstiness_label(burstiness))
            axis.grid(True, which="both", alpha=0.3)
        axes[row][0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
