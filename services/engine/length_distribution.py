"""A request's predicted output-length distribution, and its remaining length given survival.

The predictor returns a mean and a few quantiles (p10, p50, p90). The scheduler needs, every step,
the expected remaining output of a request that has already produced g tokens:

    E[L - g | L > g] = integral_g^inf S(x) dx / S(g)        S(x) = P(L > x), the survival function

S is piecewise linear between the quantile knots and exponential beyond the last one:

    S(x)
    1.0 +-.
        |   `-.                  knots: (0, 1), (p10, 0.9), (p50, 0.5), (p90, 0.1)
    0.5 +-------`--.
        |            `--.
    0.1 +-------------------`-._  exponential tail, mean excess tail_mean_tokens
        +--+------+-----------+-----------> x (tokens)
           p10    p50         p90

Beyond the last knot the tail is heavy (generalized Pareto): its mean excess starts at
tail_mean_tokens, chosen so that the whole distribution's mean equals the predicted mean (floored,
so a mean below the knots cannot make it negative), and grows by TAIL_GROWTH tokens per token
survived. Consequences the scheduler relies on:
  * a request that outlives its prediction gets a new estimate that grows the longer it runs,
    never "0 tokens left": a stale estimate cannot pin a job at the head of the queue (it becomes
    displaceable by fresh short requests);
  * with only a mean (no quantiles), the whole distribution is that tail from 0.
Queried for every running request every step (see the benchmark `alise bench scheduler`), so a
query is a few float operations on a cached piece. Plain Python.
"""

from __future__ import annotations

import bisect
import math
from typing import Sequence

TAIL_GROWTH = 0.5  # beyond the last quantile, each token survived adds this to the expected remainder
MIN_TAIL_MEAN_TOKENS = 1.0  # floor of the exponential tail's mean excess
TAIL_FLOOR_SHARE_OF_LAST_KNOT = 0.1  # ... and at least this share of the last knot's length


class LengthDistribution:
    """Immutable after construction (but for a cache); `expected_remaining_tokens(g)` is the hot
    query. On each piece, S(g) = a + b*g and the integral of S from g to infinity is quadratic in g,
    so the answer is (c0 + c1*g + c2*g^2) / (a + b*g); the piece of the previous query is cached, as
    a running request asks for g, g+1, g+2, ... (one piece change per knot)."""

    __slots__ = ("mean_tokens", "tail_mean_tokens", "_xs", "_survival", "_integral_from", "_piece")

    def __init__(self, mean_tokens: float, quantiles: Sequence[tuple[float, float]] = ()) -> None:
        """mean_tokens > 0; quantiles = (level in (0, 1), tokens >= 0), any order."""
        if not math.isfinite(mean_tokens) or mean_tokens <= 0:
            raise ValueError(f"mean_tokens must be a finite number > 0, got {mean_tokens}")
        self.mean_tokens = float(mean_tokens)
        xs, survival = _knots(quantiles)
        self._xs = xs  # knot lengths, strictly increasing, xs[0] == 0
        self._survival = survival  # S at each knot, non-increasing, survival[0] == 1
        body = [(survival[i] + survival[i + 1]) / 2 * (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)]
        self.tail_mean_tokens = _tail_mean(self.mean_tokens, sum(body), xs[-1], survival[-1])
        # integral_from[i] = integral of S from xs[i] to infinity
        integral_from = [survival[-1] * self.tail_mean_tokens]
        for area in reversed(body):
            integral_from.append(integral_from[-1] + area)
        self._integral_from = integral_from[::-1]
        self._piece = self._piece_at(0)  # (lo, hi, c0, c1, c2, a, b) of the last query's piece

    def expected_remaining_tokens(self, num_generated: int) -> float:
        """E[L - g | L > g] for g = num_generated tokens already produced (>= 1 token)."""
        lo, hi, c0, c1, c2, a, b = self._piece
        if not lo <= num_generated < hi:
            self._piece = self._piece_at(num_generated)
            lo, hi, c0, c1, c2, a, b = self._piece
        g = num_generated
        remaining = (c0 + g * (c1 + g * c2)) / (a + b * g)
        return remaining if remaining > 1.0 else 1.0

    def _piece_at(self, g: float) -> tuple[float, float, float, float, float, float, float]:
        xs = self._xs
        if g >= xs[-1]:  # Pareto tail: mean excess tail_mean + TAIL_GROWTH * (g - last knot)
            return (xs[-1], math.inf, self.tail_mean_tokens - TAIL_GROWTH * xs[-1], TAIL_GROWTH, 0.0, 1.0, 0.0)
        i = max(0, bisect.bisect_right(xs, g) - 1)
        x0, x1 = xs[i], xs[i + 1]
        s0, s1 = self._survival[i], self._survival[i + 1]
        b = (s1 - s0) / (x1 - x0)
        a = s0 - b * x0
        # integral_g^x1 S = (S(g) + s1) / 2 * (x1 - g), with S(g) = a + b*g, expanded in g
        p = a + s1
        c0 = self._integral_from[i + 1] + p * x1 / 2
        return (x0, x1, c0, (b * x1 - p) / 2, -b / 2, a, b)

    def quantile_tokens(self, level: float) -> float:
        """Inverse of the CDF: the length at cumulative probability `level` (sampling, tests)."""
        target = 1.0 - level
        for i in range(len(self._xs) - 1):
            s0, s1 = self._survival[i], self._survival[i + 1]
            if s1 <= target <= s0 and s0 > s1:
                return self._xs[i] + (s0 - target) / (s0 - s1) * (self._xs[i + 1] - self._xs[i])
        # generalized Pareto beyond the last knot: shape xi, scale sigma give mean excess e(0) = tail mean
        xi = TAIL_GROWTH / (1.0 + TAIL_GROWTH)
        sigma = self.tail_mean_tokens * (1.0 - xi)
        return self._xs[-1] + sigma / xi * ((self._survival[-1] / max(target, 1e-12)) ** xi - 1.0)


def _knots(quantiles: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """(0, S=1) then each quantile as (tokens, 1 - level), made strictly increasing in tokens."""
    xs, survival = [0.0], [1.0]
    for level, tokens in sorted(quantiles):
        if not (0.0 < level < 1.0) or not math.isfinite(tokens) or tokens < 0:
            raise ValueError(f"quantile ({level}, {tokens}) needs a level in (0, 1) and tokens >= 0")
        x = max(float(tokens), xs[-1] + 1e-3)  # equal or crossing quantiles: keep the CDF a function
        xs.append(x)
        survival.append(min(survival[-1], 1.0 - level))
    return xs, survival


def _tail_mean(mean_tokens: float, body_integral: float, last_x: float, last_survival: float) -> float:
    """Mean excess of the exponential tail that makes the distribution's mean equal mean_tokens."""
    floor = max(MIN_TAIL_MEAN_TOKENS, TAIL_FLOOR_SHARE_OF_LAST_KNOT * last_x)
    if last_survival <= 0:
        return floor
    return max(floor, (mean_tokens - body_integral) / last_survival)
