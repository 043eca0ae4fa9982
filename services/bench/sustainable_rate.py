"""The highest request rate a system sustains under a mean normalized-latency bound (DESIGN.md s3).

A swept rate is *sustained* when its mean normalized latency is within the bound AND the queue was
not still growing over the second half of the run (AND no request failed). The sustainable rate is
monotone by construction: walking the sweep upward, it stops at the first rate not sustained, so a
lucky point above a failure never counts.

Interpolation: when the first failed point violates the latency bound (whether or not its queue
also grew), the rate is interpolated linearly on the mean latency between the last sustained point
(r0, m0 <= bound) and the failed one (r1, m1 > bound):  r0 + (bound - m0) / (m1 - m0) * (r1 - r0).
This makes ratios between policies less sensitive to the sweep's grid. A point that fails only by
queue growth or failed requests (its mean is within the bound) is not interpolated: r0 is returned,
since the latency says nothing about where that failure began.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

DEFAULT_BOUND_MULTIPLES = (2.0, 4.0, 8.0)  # bounds as multiples of the unloaded mean normalized latency


@dataclass(frozen=True)
class RatePoint:
    """One point of a request-rate sweep for one policy."""

    rate_per_s: float  # offered request rate, requests/s
    mean_normalized_latency_s_per_token: float  # mean of e2e / output tokens, s/token
    p99_normalized_latency_s_per_token: float  # p99 of the same, s/token
    queue_growing: bool  # in-system count still rising over the second half (latency_metrics)
    num_failed: int = 0  # requests that ended in an error (serving runs); > 0 = not sustained

    def is_sustained(self, bound_s_per_token: float) -> bool:
        return (
            self.mean_normalized_latency_s_per_token <= bound_s_per_token
            and not self.queue_growing
            and self.num_failed == 0
        )


def sustainable_rate(points: Sequence[RatePoint], *, bound_s_per_token: float) -> float:
    """Highest sustained rate of the sweep (interpolated, see module doc); 0.0 when the lowest fails."""
    if not bound_s_per_token > 0:
        raise ValueError(f"bound_s_per_token must be > 0, got {bound_s_per_token}")
    ordered = sorted(points, key=lambda point: point.rate_per_s)
    rates = [point.rate_per_s for point in ordered]
    if len(set(rates)) != len(rates):
        raise ValueError(f"rates must be distinct, got {rates}")
    last_sustained: RatePoint | None = None
    for point in ordered:
        if point.is_sustained(bound_s_per_token):
            last_sustained = point
            continue
        if last_sustained is None:
            return 0.0
        return _interpolated(last_sustained, point, bound_s_per_token)
    return 0.0 if last_sustained is None else last_sustained.rate_per_s


def _interpolated(sustained: RatePoint, failed: RatePoint, bound_s_per_token: float) -> float:
    low_latency = sustained.mean_normalized_latency_s_per_token
    high_latency = failed.mean_normalized_latency_s_per_token
    if high_latency <= bound_s_per_token or math.isinf(failed.rate_per_s) or not math.isfinite(high_latency):
        return sustained.rate_per_s
    fraction = (bound_s_per_token - low_latency) / (high_latency - low_latency)
    return sustained.rate_per_s + fraction * (failed.rate_per_s - sustained.rate_per_s)


def latency_bounds(
    unloaded_mean_s_per_token: float, multiples: Sequence[float] = DEFAULT_BOUND_MULTIPLES
) -> tuple[float, ...]:
    """The bounds, in s/token, as multiples of the unloaded mean normalized latency."""
    if not 0 < unloaded_mean_s_per_token < math.inf:
        raise ValueError(f"unloaded_mean_s_per_token must be finite and > 0, got {unloaded_mean_s_per_token}")
    if not multiples or min(multiples) <= 0:
        raise ValueError(f"multiples must be non-empty and > 0, got {tuple(multiples)}")
    return tuple(unloaded_mean_s_per_token * multiple for multiple in multiples)
