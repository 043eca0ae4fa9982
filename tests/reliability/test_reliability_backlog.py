"""A starved backlog cannot grow the gateway without bound: its in-flight limit refuses the excess
at once (RESOURCE_EXHAUSTED, QUEUE_FULL, naming the flag), and its RSS stops with the backlog.

The 30-minute soak's gateway grew from ~100 to ~147 MiB while bursts piled up behind starved
engines (~65-80 KiB per stream held, mostly gRPC core's calls; glibc keeps it after the backlog
drains). Here two real engines are starved by open-loop arrivals (~3x their capacity, 300 s
deadlines) behind a gateway process limited to 48 streams: the backlog stops at the limit and so
does the RSS (unbounded, 40 s of 40/s held 818 streams and grew the gateway 74 -> 127 MiB).
The request-bytes limit: test_reliability_request_bytes.py.
"""

from __future__ import annotations

import pytest

from services.bench.chaos_stack import ChaosStack, ChaosStackConfig
from services.bench.soak_backlog import starve

pytestmark = pytest.mark.timeout(180)


async def test_a_starved_backlog_stops_at_the_gateways_limit_and_so_does_its_rss(tmp_path):
    config = ChaosStackConfig(
        log_dir=tmp_path,
        with_predictor=False,
        gateway_in_process=False,
        gateway_args=("--max-in-flight-requests", "48"),
    )
    chaos = ChaosStack(config)
    await chaos.start()
    try:
        result = await starve(chaos, rate_per_s=50.0, duration_s=8.0, every_s=0.25)
    finally:
        await chaos.stop()
    print({key: value for key, value in result.to_json().items() if key != "samples"})
    assert set(result.codes) == {"OK", "RESOURCE_EXHAUSTED/QUEUE_FULL"}, result.codes
    assert "--max-in-flight-requests" in result.sample_refusal, result.sample_refusal
    assert result.codes["RESOURCE_EXHAUSTED/QUEUE_FULL"] > 100, result.codes  # the backlog was there
    # client side: refusals in transit count for a few ms, hence the slack over 48
    assert result.peak_in_flight <= 48 + 16, result.peak_in_flight
    assert result.rss_peak_mib - result.rss_start_mib < 12.0, result
