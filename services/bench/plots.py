"""The benchmark curve: mean normalized latency vs request rate, one line per policy.

Log y, because latency explodes past capacity and the interesting part is near the unloaded floor.
Dashed horizontal lines mark the latency bounds; a hollow marker marks a point whose queue was
still growing or where requests failed (not sustained whatever its latency). Points at an infinite
rate or with no finished request cannot be drawn and are left out (the JSON keeps them).
matplotlib with the Agg backend (no display).
"""

from __future__ import annotations

import math
import pathlib
from typing import Mapping, Sequence

from services.bench.sustainable_rate import RatePoint


def _drawable(point: RatePoint) -> bool:
    return math.isfinite(point.rate_per_s) and math.isfinite(point.mean_normalized_latency_s_per_token)


def plot_latency_vs_rate(
    curves: Mapping[str, Sequence[RatePoint]],
    *,
    bounds_s_per_token: Sequence[float],
    title: str,
    path: pathlib.Path,
) -> pathlib.Path:
    """Saves the PNG to `path` (parent folders created) and returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7.0, 4.5), dpi=120)
    try:
        for policy, points in curves.items():
            ordered = sorted((p for p in points if _drawable(p)), key=lambda p: p.rate_per_s)
            if not ordered:
                continue
            rates = [p.rate_per_s for p in ordered]
            means = [p.mean_normalized_latency_s_per_token for p in ordered]
            (line,) = axes.plot(rates, means, marker="o", label=policy)
            growing = [(r, m) for r, m, p in zip(rates, means, ordered) if p.queue_growing or p.num_failed]
            if growing:
                axes.scatter(*zip(*growing), s=70, facecolors="white", edgecolors=line.get_color(), zorder=3)
        for index, bound in enumerate(bounds_s_per_token):
            label = "latency bounds" if index == 0 else None
            axes.axhline(bound, linestyle="--", color="grey", linewidth=0.8, label=label)
        axes.set_yscale("log")
        axes.set_xlabel("request rate (requests/s)")
        axes.set_ylabel("mean normalized latency (s/token)")
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(title="hollow: queue growing", fontsize="small")
        figure.tight_layout()
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        pyplot.close(figure)
    return path
