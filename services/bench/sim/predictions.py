"""Output-length predictions for simulated requests: a noisy oracle with a chosen Kendall's tau.

How much alise gains depends on how well lengths are predicted, so the simulator can dial the quality:

    predicted median = true length * exp(sigma * e),   e ~ N(0, 1) per request
    quantiles        = median * exp(sigma * z_level)    (z_0.1 = -1.28, z_0.9 = +1.28)
    mean             = median * exp(sigma^2 / 2)

i.e. a log-normal belief centred on a noisy copy of the truth, whose width matches its own error
(a calibrated predictor). sigma is found by bisection so that Kendall's tau between the predicted
medians and the true lengths hits the target on this very sample; tau = 1 gives sigma = 0 (the
truth, with a tiny spread so the distribution stays a distribution).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import kendalltau

from services.engine.length_distribution import LengthDistribution

Z_BY_LEVEL = {0.1: -1.2815515655446004, 0.5: 0.0, 0.9: 1.2815515655446004}
MIN_SIGMA = 0.02  # spread of a "perfect" prediction
MAX_SIGMA = 6.0


def noisy_oracle_distributions(
    true_output_tokens: Sequence[int], *, target_tau: float, seed: int
) -> tuple[list[LengthDistribution], float]:
    """One distribution per request, and the Kendall's tau actually reached (within ~0.01)."""
    if not 0.0 <= target_tau <= 1.0:
        raise ValueError(f"target_tau must be in [0, 1], got {target_tau}")
    truth = np.asarray(true_output_tokens, dtype=np.float64)
    noise = np.random.default_rng(seed).standard_normal(len(truth))
    sigma = _sigma_for_tau(truth, noise, target_tau)
    medians = truth * np.exp(sigma * noise)
    spread = max(sigma, MIN_SIGMA)
    reached = _tau(medians, truth) if len(truth) > 1 else 1.0
    return [_log_normal(median, spread) for median in medians], float(reached)


def _sigma_for_tau(truth: np.ndarray, noise: np.ndarray, target_tau: float) -> float:
    if target_tau >= 1.0 or len(truth) < 2:
        return 0.0
    low, high = 0.0, MAX_SIGMA  # tau falls as sigma grows
    for _ in range(30):
        middle = (low + high) / 2
        if _tau(truth * np.exp(middle * noise), truth) > target_tau:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _log_normal(median: float, sigma: float) -> LengthDistribution:
    quantiles = [(level, median * math.exp(sigma * z)) for level, z in Z_BY_LEVEL.items()]
    return LengthDistribution(median * math.exp(sigma * sigma / 2), quantiles)


def constant_distributions(num_requests: int, mean_tokens: float) -> list[LengthDistribution]:
    """No predictor at all: every request gets the same prior (exponential, memoryless)."""
    prior = LengthDistribution(mean_tokens)
    return [prior] * num_requests


def kendall_tau(predicted: Sequence[float], truth: Sequence[int]) -> float:
    """Kendall's tau-b of any predictions against the true lengths (the figure the noisy oracle targets)."""
    return _tau(np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64))


def _tau(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Kendall's tau-b (O(n log n): the simulator's traces have thousands of requests)."""
    return float(kendalltau(predicted, truth).statistic)
