"""Steady-state measurement: the window, the stability check (it flags 5% overload over 32,000
requests), the closed-loop capacity, confidence intervals, goodput and the oracle's share."""

import math

import numpy as np
import pytest
from scipy import stats

from services.bench.latency_metrics import RequestRecord, queue_is_growing
from services.bench.slo_metrics import SloBounds, goodput_load, headline_metrics, oracle_share
from services.bench.steady_state import SteadyStateWindow, closed_loop_capacity, mean_ci, stability

SERVICE_RATE_PER_S = 20.0


def _fifo_queue(num_requests: int, load: float, seed: int = 0) -> list[RequestRecord]:
    """A single FIFO server (exponential service times, rate 20/s) under Poisson arrivals at `load`:
    Lindley's recursion, start = max(arrival, previous finish)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / (load * SERVICE_RATE_PER_S), num_requests))
    services = rng.exponential(1.0 / SERVICE_RATE_PER_S, num_requests)
    records, free_at = [], 0.0
    for index, (arrival, service) in enumerate(zip(arrivals, services, strict=True)):
        start = max(arrival, free_at)
        free_at = start + service
        records.append(RequestRecord(f"r{index}", float(arrival), float(start + service / 10), float(free_at), 10, 10))
    return records


def test_the_window_measures_the_middle_arrivals():
    records = _fifo_queue(1000, 0.5)
    measured = SteadyStateWindow(0.1, 0.2).measured(list(reversed(records)))
    assert [r.request_id for r in measured] == [f"r{i}" for i in range(100, 800)]
    with pytest.raises(ValueError):
        SteadyStateWindow(0.6, 0.4)


def test_five_percent_overload_over_32000_requests_is_flagged():
    records = _fifo_queue(32_000, 1.05)
    check = stability(records)
    assert not check.is_stable
    assert 0.02 < check.shortfall_fraction < 0.1  # about 0.05 / 1.05, give or take the queue noise
    assert check.rise_fraction > 0.02
    assert not queue_is_growing(records)  # the older 10% growth rule misses it: why this check exists


@pytest.mark.parametrize("load", [0.8, 0.9])
def test_a_stable_load_is_not_flagged(load):
    check = stability(_fifo_queue(32_000, load, seed=1))
    assert check.is_stable
    assert abs(check.shortfall_fraction) < 0.02


def test_closed_loop_capacity_is_the_service_rate():
    records = _fifo_queue(8000, 3.0)  # always busy after the first few: completions at the service rate
    assert closed_loop_capacity(records) == pytest.approx(SERVICE_RATE_PER_S, rel=0.05)


def test_mean_ci_is_the_student_t_interval():
    values = [1.0, 2.0, 4.0, 5.0]
    estimate = mean_ci(values)
    expected = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert (estimate.mean, estimate.half_width) == pytest.approx((3.0, expected))
    assert math.isnan(mean_ci([2.0]).half_width)


def test_slo_attainment_needs_both_bounds():
    slo = SloBounds(ttft_s=1.0, tpot_s=0.1)
    fine = RequestRecord("a", 0.0, 0.5, 1.4, 10, 10)  # ttft 0.5, tpot 0.1
    slow_first = RequestRecord("b", 0.0, 1.5, 2.0, 10, 10)
    slow_decode = RequestRecord("c", 0.0, 0.5, 2.5, 10, 10)
    metrics = headline_metrics([fine, slow_first, slow_decode], slo)
    assert metrics.slo_attainment == pytest.approx(1 / 3)


def test_goodput_walks_up_and_stops_at_the_first_miss():
    loads, attained = [0.8, 0.9, 0.95, 1.0], [0.999, 0.995, 0.97, 0.95]
    assert goodput_load(loads, attained, [True] * 4, 0.99) == pytest.approx(0.9 + 0.05 * 0.005 / 0.025)
    assert goodput_load(loads, attained, [True] * 4, 0.90) == 1.0  # the last swept load: a lower bound
    assert goodput_load(loads, attained, [True, False, True, True], 0.90) == 0.8  # unstable = missed
    assert goodput_load(loads, attained, [True] * 4, 0.9999) == 0.0


def test_oracle_share():
    assert oracle_share(10.0, 7.0, 6.0) == pytest.approx(0.75)
    assert oracle_share(10.0, 9.0, 9.9) is None  # the oracle gains under 5%: no share
