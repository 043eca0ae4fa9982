"""Arrival times: gamma renewal process with the requested mean rate, deterministic for a seed."""

import math

import numpy as np
import pytest

from services.bench.arrivals import arrival_times_s


def test_poisson_arrivals_have_the_requested_rate_and_start_at_zero():
    times = arrival_times_s(20_000, 4.0, seed=3)
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps >= 0)
    assert abs(gaps.mean() - 0.25) < 0.01
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential: coefficient of variation 1


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_burstiness_changes_the_spread_not_the_mean(burstiness):
    gaps = np.diff(arrival_times_s(20_000, 2.0, seed=5, burstiness=burstiness))
    assert abs(gaps.mean() - 0.5) < 0.03
    assert abs(gaps.std() / gaps.mean() - 1 / math.sqrt(burstiness)) < 0.1


def test_deterministic_for_a_seed():
    assert arrival_times_s(100, 3.0, seed=1) == arrival_times_s(100, 3.0, seed=1)
    assert arrival_times_s(100, 3.0, seed=1) != arrival_times_s(100, 3.0, seed=2)


def test_infinite_rate_sends_everything_at_zero_and_zero_requests_is_empty():
    assert arrival_times_s(5, math.inf, seed=0) == [0.0] * 5
    assert arrival_times_s(0, 1.0, seed=0) == []


@pytest.mark.parametrize("rate, burstiness", [(0.0, 1.0), (-1.0, 1.0), (math.nan, 1.0), (1.0, 0.0), (1.0, math.inf)])
def test_bad_parameters_raise(rate, burstiness):
    with pytest.raises(ValueError):
        arrival_times_s(3, rate, seed=0, burstiness=burstiness)
