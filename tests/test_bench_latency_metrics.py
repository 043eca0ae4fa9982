"""Latency records and summaries; the queue-growth test on synthetic stable and overloaded runs."""

import math

import numpy as np
import pytest

from services.bench.latency_metrics import (
    RequestRecord,
    Slo,
    in_system_counts,
    queue_growth,
    queue_is_growing,
    summarize,
)


def record(i, arrival, first, finish, output=10, prompt=5, preemptions=0):
    return RequestRecord(f"r{i}", arrival, first, finish, prompt, output, preemptions)


def test_record_properties():
    r = record(0, 1.0, 1.5, 3.5, output=5)
    assert r.e2e_latency_s == 2.5 and r.ttft_s == 0.5
    assert r.normalized_latency_s_per_token == pytest.approx(0.5)
    assert r.tpot_s == pytest.approx(0.5)  # (2.5 - 0.5) / 4
    assert record(1, 0.0, 0.2, 0.2, output=1).tpot_s == 0.0


def test_summarize_figures_and_goodput():
    records = [
        record(i, float(i), i + 0.1 * (i + 1), i + 1.0 * (i + 1), output=10, preemptions=i % 2) for i in range(4)
    ]
    summary = summarize(records, slo=Slo(max_ttft_s=0.25, max_normalized_latency_s_per_token=0.35))
    normalized = [0.1, 0.2, 0.3, 0.4]
    assert summary.num_requests == 4
    assert summary.duration_s == pytest.approx(7.0)  # first arrival 0 -> last finish 3 + 4
    assert summary.request_throughput_per_s == pytest.approx(4 / 7)
    assert summary.output_token_throughput_per_s == pytest.approx(40 / 7)
    assert summary.mean_normalized_latency_s_per_token == pytest.approx(0.25)
    assert summary.p50_normalized_latency_s_per_token == pytest.approx(0.25)
    assert summary.p99_normalized_latency_s_per_token == pytest.approx(np.percentile(normalized, 99))
    assert summary.p99_ttft_s == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 99))
    assert summary.num_meeting_slo == 2  # ttft 0.1, 0.2 within 0.25; both normalized <= 0.35
    assert summary.goodput_per_s == pytest.approx(2 / 7)
    assert summary.num_preemptions == 2
    no_slo = summarize(records, slo=Slo())
    assert no_slo.num_meeting_slo == 4
    with pytest.raises(ValueError):
        summarize([], slo=Slo())


def test_in_system_counts():
    records = [record(0, 0.0, 0.5, 2.0), record(1, 1.0, 1.5, 3.0)]
    counts = in_system_counts(records, np.array([-1.0, 0.0, 1.5, 2.0, 2.5, 3.0]))
    assert counts.tolist() == [0, 1, 2, 1, 1, 0]


def run(rate_per_s, service_s, num_requests=400, seed=0):
    """A single-server FIFO queue: service time service_s, Poisson arrivals at rate_per_s."""
    rng = np.random.default_rng(seed)
    arrivals = np.concatenate([[0.0], np.cumsum(rng.exponential(1 / rate_per_s, num_requests - 1))])
    records, free_at = [], 0.0
    for i, arrival in enumerate(arrivals):
        start = max(arrival, free_at)
        free_at = start + service_s
        records.append(record(i, float(arrival), start + service_s / 10, free_at))
    return records


def test_stable_run_is_not_growing_and_overloaded_run_is():
    stable = run(rate_per_s=5.0, service_s=0.1)  # utilization 0.5
    overloaded = run(rate_per_s=5.0, service_s=0.3)  # utilization 1.5: a third of the load is left over
    assert not queue_is_growing(stable)
    assert queue_is_growing(overloaded)
    rise, num_arrivals = queue_growth(overloaded)
    assert rise / num_arrivals == pytest.approx(1 - 1 / 1.5, abs=0.1)


def test_mild_overload_below_the_threshold_is_tolerated_and_window_is_validated():
    slightly = run(rate_per_s=5.0, service_s=0.21)  # keeps up with ~95% of the load
    assert not queue_is_growing(slightly)
    with pytest.raises(ValueError):
        queue_is_growing(slightly, window_fraction=0.0)


def test_all_at_once_has_no_trend_window():
    records = [record(i, 0.0, 0.1 * i + 0.05, 0.1 * (i + 1)) for i in range(10)]
    assert queue_growth(records) == (0.0, 10)
    assert not queue_is_growing(records)
    assert math.isfinite(summarize(records, slo=Slo()).mean_tpot_s)
