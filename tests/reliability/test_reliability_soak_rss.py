"""The soak's RSS figures: growth start->end, after the warm-up mark, and a fitted slope per hour.

A warm-up rise followed by a flat line must read as ~0 growth after warm-up and ~0 slope, while a
steady leak must show as a positive slope; the sampler reads a live process (this one) from /proc.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from services.bench.soak_rss import RssSampler, rss_bytes_of, rss_growth

MIB = 2**20


def test_warmup_rise_then_flat_is_growth_start_to_end_but_not_after_warmup():
    times_s = [float(t) for t in range(0, 1800, 10)]
    # +20 % within the first 60 s (arenas and caches filling), then flat
    values = [int(100 * MIB * (1.0 + 0.2 * min(t, 60.0) / 60.0)) for t in times_s]
    growth = rss_growth(times_s, values, warmup_fraction=0.1)
    assert growth.start_to_end == pytest.approx(0.2, abs=1e-6)
    assert growth.after_warmup == pytest.approx(0.0, abs=1e-6)
    assert growth.slope_per_hour == pytest.approx(0.0, abs=1e-6)
    assert growth.warmup_bytes == values[18]  # the first sample at or after 10 % of 1,790 s (179 s -> 180 s)
    assert growth.peak_bytes == max(values)


def test_steady_leak_shows_as_slope_per_hour():
    times_s = [float(t) for t in range(0, 3601, 10)]
    values = [int(100 * MIB + 10 * MIB * t / 3600.0) for t in times_s]  # +10 MiB per hour
    growth = rss_growth(times_s, values, warmup_fraction=0.1)
    assert growth.slope_per_hour == pytest.approx(10 / 101.0, rel=1e-3)  # per hour, of the RSS at the mark
    assert growth.after_warmup > 0.08


def test_bad_series_are_refused():
    with pytest.raises(ValueError, match="paired samples"):
        rss_growth([0.0], [1], warmup_fraction=0.1)
    with pytest.raises(ValueError, match="warmup_fraction"):
        rss_growth([0.0, 1.0], [1, 1], warmup_fraction=1.0)
    with pytest.raises(ValueError, match="every_s"):
        RssSampler({"self": os.getpid()}, every_s=0.0)


async def test_sampler_reads_a_live_process_periodically_and_skips_a_dead_one():
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    sampler = RssSampler({"self": os.getpid(), "dead": dead.pid}, every_s=0.05).start()
    await asyncio.sleep(0.3)
    await sampler.stop()
    assert len(sampler.values_bytes["self"]) >= 4
    assert all(value > MIB for value in sampler.values_bytes["self"])
    assert sampler.values_bytes["dead"] == []
    assert set(sampler.growth(0.1)) == {"self"}
    assert rss_bytes_of(os.getpid()) > MIB
    series = sampler.series_mib()["self"]
    assert len(series["t_s"]) == len(series["rss_mib"])


def test_the_soak_plot_draws_one_panel_per_service(tmp_path):
    pytest.importorskip("matplotlib")
    from services.bench.soak_plot import plot_rss

    soak = {
        "duration_s": 60.0,
        "rss_warmup_fraction": 0.1,
        "rss_after_warmup": {"engine-0": 0.01, "gateway": 0.0},
        "rss_slope_per_hour": {"engine-0": 0.02, "gateway": 0.0},
        "rss_samples": {
            "engine-0": {"t_s": [0.0, 30.0, 60.0], "rss_mib": [500.0, 520.0, 521.0]},
            "gateway": {"t_s": [0.0, 30.0, 60.0], "rss_mib": [70.0, 80.0, 80.0]},
        },
    }
    path = plot_rss(soak, tmp_path / "soak_rss.png")
    assert path.read_bytes().startswith(b"\x89PNG")
