"""Request arrival times: a gamma renewal process (Poisson when burstiness is 1), like vLLM's benchmark.

Inter-arrival gaps are Gamma(shape=burstiness, scale=1 / (rate * burstiness)): the mean gap is
1 / rate whatever the burstiness; the coefficient of variation is 1 / sqrt(burstiness), so
burstiness < 1 gives burstier traffic than Poisson and > 1 smoother. The first request arrives at
0 and request i + 1 one gap after request i (vLLM sends, then sleeps one gap):

    arrival_s = [0, g0, g0 + g1, ..., g0 + ... + g(n-2)]

A rate of +inf sends every request at 0 (the saturating "all at once" point of a sweep).
"""

from __future__ import annotations

import math

import numpy as np


def arrival_times_s(num_requests: int, rate_per_s: float, *, seed: int, burstiness: float = 1.0) -> list[float]:
    """Non-decreasing arrival times in seconds from 0, deterministic for (seed, rate, burstiness)."""
    if num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    if math.isnan(rate_per_s) or rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0 (inf = all at once), got {rate_per_s}")
    if not 0 < burstiness < math.inf:
        raise ValueError(f"burstiness must be a finite number > 0, got {burstiness}")
    if num_requests == 0:
        return []
    if math.isinf(rate_per_s):
        return [0.0] * num_requests
    rng = np.random.default_rng(seed)
    gaps_s = rng.gamma(shape=burstiness, scale=1.0 / (rate_per_s * burstiness), size=num_requests - 1)
    return [0.0, *np.cumsum(gaps_s).tolist()]
