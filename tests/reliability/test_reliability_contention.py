"""The overload bench's split of an admitted request's TTFT: the engine's own part (what admission
controls) and the rest (gateway, event loops, CPU contention), and the contention probe's figures."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from services.bench.chaos_contention import ContentionProbe, process_cpu_s
from services.bench.chaos_load import StreamOutcome
from services.bench.chaos_overload import summarize_burst


def _admitted(index: int, client_ttft_s: float, engine_ttft_s: float | None, engine_queue_s: float) -> StreamOutcome:
    outcome = StreamOutcome(index, "p", 4, index, started_s=100.0)
    outcome.first_token_s, outcome.ended_s = 100.0 + client_ttft_s, 101.0
    outcome.engine_ttft_s, outcome.engine_queue_s = engine_ttft_s, engine_queue_s
    return outcome


def test_admitted_ttft_is_split_into_the_engines_part_and_the_way_there_and_back():
    outcomes = [_admitted(i, 0.05 + 0.01 * i, 0.04 + 0.01 * i, 0.02) for i in range(10)]
    outcomes.append(_admitted(10, 0.9, None, 0.0))  # no engine timings (e.g. an older engine): not in the split
    refused = StreamOutcome(11, "p", 4, 11, started_s=100.0, code="RESOURCE_EXHAUSTED", ended_s=100.002)
    result = summarize_burst([*outcomes, refused], wall_s=1.0)
    assert result.codes == {"OK": 11, "RESOURCE_EXHAUSTED": 1}
    assert result.admitted_engine_ttft_p99_s == pytest.approx(0.13)
    assert result.admitted_engine_queue_p99_s == pytest.approx(0.02)
    assert result.admitted_outside_engine_p50_s == pytest.approx(0.01)
    assert result.admitted_outside_engine_p99_s == pytest.approx(0.01)
    assert result.admitted_ttft_p99_s == pytest.approx(0.9)  # the client's own figure keeps every stream


async def test_probe_reports_cpu_of_each_process_and_this_loops_lateness():
    probe = ContentionProbe({"self": os.getpid()}).start()
    await asyncio.sleep(0.005)  # the probe's timer is armed
    began_s = time.monotonic()
    while time.monotonic() - began_s < 0.1:  # hold the loop: its timer fires ~0.1 s late once
        pass
    await asyncio.sleep(0.05)
    figures = await probe.stop()
    assert figures["cpu_cores_used"]["self"] > 0.0  # the busy wait ran on this process's CPU time
    assert figures["client_loop_lag_max_s"] >= 0.08
    assert figures["num_cpus"] == os.cpu_count()
    assert process_cpu_s(os.getpid()) > 0
