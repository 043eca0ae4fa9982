"""Sustainable rate under a latency bound: monotone, interpolated on latency; bounds; the plot."""

import math

import pytest

from services.bench.plots import plot_latency_vs_rate
from services.bench.results import build_report, write_report
from services.bench.sustainable_rate import RatePoint, latency_bounds, sustainable_rate


def point(rate, mean, growing=False, failed=0):
    return RatePoint(rate, mean, mean * 3, growing, failed)


def test_interpolates_on_the_mean_latency_between_last_sustained_and_first_failed():
    points = [point(1.0, 0.1), point(2.0, 0.2), point(4.0, 0.6)]
    assert sustainable_rate(points, bound_s_per_token=0.4) == pytest.approx(3.0)
    assert sustainable_rate(points, bound_s_per_token=0.2) == pytest.approx(2.0)
    assert sustainable_rate(list(reversed(points)), bound_s_per_token=0.4) == pytest.approx(3.0)


def test_stops_at_the_first_failure_even_if_a_higher_rate_passes():
    points = [point(1.0, 0.1), point(2.0, 0.5), point(3.0, 0.1)]
    assert sustainable_rate(points, bound_s_per_token=0.3) == pytest.approx(1.5)


def test_queue_growth_or_failures_fail_without_interpolation():
    growing = [point(1.0, 0.1), point(2.0, 0.2, growing=True)]
    assert sustainable_rate(growing, bound_s_per_token=0.4) == 1.0
    failed = [point(1.0, 0.1), point(2.0, 0.2, failed=3)]
    assert sustainable_rate(failed, bound_s_per_token=0.4) == 1.0
    both = [point(1.0, 0.1), point(2.0, 0.5, growing=True)]
    assert sustainable_rate(both, bound_s_per_token=0.3) == pytest.approx(1.5)


def test_none_and_all_sustained():
    assert sustainable_rate([point(1.0, 0.5)], bound_s_per_token=0.3) == 0.0
    assert sustainable_rate([], bound_s_per_token=0.3) == 0.0
    assert sustainable_rate([point(1.0, 0.1), point(2.0, 0.2)], bound_s_per_token=0.3) == 2.0
    assert sustainable_rate([point(1.0, 0.1), point(math.inf, 0.9)], bound_s_per_token=0.3) == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        sustainable_rate([point(1.0, 0.1)], bound_s_per_token=0.0)
    with pytest.raises(ValueError, match="distinct"):
        sustainable_rate([point(1.0, 0.1), point(1.0, 0.2)], bound_s_per_token=1.0)


def test_latency_bounds_are_multiples_of_the_unloaded_latency():
    assert latency_bounds(0.05) == pytest.approx((0.1, 0.2, 0.4))
    assert latency_bounds(0.05, multiples=(3,)) == pytest.approx((0.15,))
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            latency_bounds(bad)


def test_plot_and_report_are_written(tmp_path):
    curves = {"fcfs": [point(1.0, 0.1), point(2.0, 0.9, growing=True)], "alise": [point(1.0, 0.1), point(2.0, 0.2)]}
    png = plot_latency_vs_rate(curves, bounds_s_per_token=[0.2, 0.4], title="t", path=tmp_path / "sub" / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = build_report("unit", {"rates": (1.0, math.inf)}, {"curves": curves})
    path = write_report(tmp_path / "r.json", report)
    text = path.read_text()
    assert '"benchmark": "unit"' in text and "NaN" not in text and "Infinity" not in text
    assert report["config"]["rates"] == [1.0, None]
    assert report["curves"]["fcfs"][1]["queue_growing"] is True
    assert {"machine", "git", "created_utc"} <= report.keys()
