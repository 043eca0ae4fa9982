"""The predicted length distribution: its mean, and the re-estimate for a request that survived."""

import math

import numpy as np
import pytest

from services.engine.length_distribution import TAIL_GROWTH, LengthDistribution

QUANTILES = [(0.1, 20.0), (0.5, 80.0), (0.9, 250.0)]


def _sampled_remaining(distribution: LengthDistribution, g: float, num_samples: int = 200_000) -> float:
    """E[L - g | L > g] by Monte Carlo through the inverse CDF (the closed form is what is tested)."""
    levels = np.random.default_rng(0).uniform(0.0, 1.0, num_samples)
    lengths = np.array([distribution.quantile_tokens(level) for level in levels])
    survivors = lengths[lengths > g]
    return float((survivors - g).mean())


def test_the_distribution_has_the_predicted_mean_and_quantiles():
    distribution = LengthDistribution(120.0, QUANTILES)
    assert distribution.expected_remaining_tokens(0) == pytest.approx(120.0)
    for level, tokens in QUANTILES:
        assert distribution.quantile_tokens(level) == pytest.approx(tokens)


def test_conditional_remaining_matches_sampling():
    distribution = LengthDistribution(120.0, QUANTILES)
    for g in (5, 60, 200, 400):
        assert distribution.expected_remaining_tokens(g) == pytest.approx(_sampled_remaining(distribution, g), rel=0.05)


def test_a_request_that_outlives_its_prediction_gets_a_growing_estimate():
    distribution = LengthDistribution(30.0, [(0.1, 5.0), (0.5, 20.0), (0.9, 60.0)])
    beyond = [distribution.expected_remaining_tokens(g) for g in (60, 100, 200, 400)]
    assert all(b > a for a, b in zip(beyond, beyond[1:]))
    assert beyond[-1] - beyond[0] == pytest.approx(TAIL_GROWTH * 340)
    assert min(beyond) >= 1.0  # never "nothing left"


def test_mean_only_prediction_is_a_tail_from_zero():
    distribution = LengthDistribution(100.0)
    assert distribution.expected_remaining_tokens(0) == pytest.approx(100.0)
    assert distribution.expected_remaining_tokens(100) == pytest.approx(100.0 + TAIL_GROWTH * 100)


def test_sequential_and_random_queries_agree():
    sequential = LengthDistribution(120.0, QUANTILES)
    answers = [sequential.expected_remaining_tokens(g) for g in range(0, 600)]
    for g in (599, 3, 250, 0, 80, 81):
        assert LengthDistribution(120.0, QUANTILES).expected_remaining_tokens(g) == pytest.approx(answers[g])


@pytest.mark.parametrize(
    "mean, quantiles",
    [(0.0, []), (math.nan, []), (10.0, [(1.0, 5.0)]), (10.0, [(0.5, -1.0)]), (10.0, [(0.5, math.inf)])],
)
def test_bad_predictions_are_rejected(mean, quantiles):
    with pytest.raises(ValueError):
        LengthDistribution(mean, quantiles)


def test_crossing_quantiles_still_give_a_distribution():
    distribution = LengthDistribution(50.0, [(0.1, 40.0), (0.5, 30.0), (0.9, 30.0)])
    assert all(distribution.expected_remaining_tokens(g) >= 1.0 for g in range(0, 200, 7))
