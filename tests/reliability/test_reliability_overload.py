"""Overload is visible and fast: RESOURCE_EXHAUSTED with a message, never a silent CANCELLED.

One engine (16 running, 64 live at most) behind a gateway process limited to 256 generations in
flight; a second gateway also bounds the predicted work queued on the engine (--max-queued-work-s). A burst of 1,000 streams at once (~60x what the engine runs) must end every stream OK or
RESOURCE_EXHAUSTED, the rejections fast; 5,000 Health.Check calls at once must all answer (gRPC
core's backlog cancelled ~2,000 of them before); and requests whose deadline cannot be met behind
the work already queued are refused at once by the engine's deadline admission.
"""

from __future__ import annotations

import dataclasses

import pytest
import pytest_asyncio

from services.bench.chaos_overload import burst, deadline_burst, health_burst, paced_overload
from services.bench.chaos_stack import ENGINE_ARGS, ChaosStack, ChaosStackConfig

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory):
    config = ChaosStackConfig(
        log_dir=tmp_path_factory.mktemp("overload"),
        num_engines=1,
        with_predictor=False,
        engine_args=(*ENGINE_ARGS, "--max-waiting-requests", "64"),
        gateway_in_process=False,
        gateway_args=("--max-in-flight-requests", "256"),
    )
    stack = ChaosStack(config)
    await stack.start()
    yield stack
    await stack.stop()


async def test_a_burst_far_above_capacity_is_shed_with_resource_exhausted(stack):
    result = await burst(stack.gateway_stub(), 1000, max_tokens=8, timeout_s=120.0)
    print(result.to_json())
    assert set(result.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, result
    assert result.codes["RESOURCE_EXHAUSTED"] >= 1000 - 256, result
    assert result.codes["OK"] >= 64, result
    assert "overloaded" in result.sample_rejection or "queue is full" in result.sample_rejection, result


async def test_steady_overload_is_rejected_fast_while_admitted_requests_finish(stack):
    # ~20x what the engine finishes (measured ~10 of these requests/s on a shared 2-core machine)
    result = await paced_overload(stack.gateway_stub(), rate_per_s=200, duration_s=3.0, max_tokens=32, timeout_s=60.0)
    print(result.to_json())
    assert set(result.codes) <= {"OK", "RESOURCE_EXHAUSTED"}, result
    assert result.codes.get("RESOURCE_EXHAUSTED", 0) > result.codes.get("OK", 0), result
    assert result.rejection_p99_s < 0.5, result  # goal 0.1 s; CI's shared cores get slack
    # once the engine said "queue full", the gateway refuses by itself until a place frees
    assert result.num_refused_by_gateway > result.codes["RESOURCE_EXHAUSTED"] // 2, result


async def test_a_bound_on_queued_work_sheds_in_the_gateway_and_keeps_admitted_requests_waiting_less(stack, tmp_path):
    """The same overload behind a gateway with --max-queued-work-s 1: the engine's queue never fills
    (every refusal is the gateway's, before tokenizing), and the admitted requests wait behind ~1 s
    of work waiting to start instead of the engine's 64-deep queue (TTFT compared in the same run)."""
    bounded = ChaosStack(
        dataclasses.replace(
            stack.config,
            log_dir=tmp_path,
            gateway_args=(*stack.config.gateway_args, "--max-queued-work-s", "1.0"),
        )
    )
    await bounded.start()
    try:
        await burst(bounded.gateway_stub(), 16, max_tokens=32, timeout_s=60.0)  # the engine's rate is measured
        shed = await paced_overload(bounded.gateway_stub(), rate_per_s=200, duration_s=3.0, max_tokens=32, timeout_s=60)
    finally:
        await bounded.stop()
    unbounded = await paced_overload(stack.gateway_stub(), rate_per_s=200, duration_s=3.0, max_tokens=32, timeout_s=60)
    print(shed.to_json(), unbounded.to_json())
    assert set(shed.codes) == {"OK", "RESOURCE_EXHAUSTED"}, shed
    assert shed.num_refused_by_gateway == shed.codes["RESOURCE_EXHAUSTED"], shed
    assert "--max-queued-work-s" in shed.sample_rejection, shed
    # The p90, neither the p99 nor the median: ~60-100 admitted requests give a p99 that one stalled process
    # moves (2.59 s vs 3.87 s in one CI run on a loaded machine), and since TTFT-slack promotion the engine's
    # own queue serves requests nearing their 1 s TTFT target first, which pulls its median to ~0.9 s (0.89
    # vs 0.91 s in one CI run) while its tail still waits the deep queue out (engine queue p90 1.16 vs 4.97 s).
    assert shed.admitted_ttft_p90_s < 0.6 * unbounded.admitted_ttft_p90_s, (shed, unbounded)


async def test_five_thousand_health_checks_at_once_all_answer(stack):
    codes = await health_burst(stack.channel("gateway"), 5000)
    assert codes == {"OK": 5000}


async def test_a_deadline_that_cannot_be_met_is_rejected_at_once(stack):
    result = await deadline_burst(
        stack.gateway_stub(),
        num_background=48,
        background_tokens=400,
        num_probes=20,
        probe_tokens=300,
        probe_deadline_s=1.0,
    )
    print(result.to_json())
    assert result.probe_codes.get("RESOURCE_EXHAUSTED", 0) == 20, result
    assert "deadline cannot be met" in result.sample_rejection, result
    assert result.probe_answer_p99_s < 0.5, result  # refused well before the 1 s deadline
