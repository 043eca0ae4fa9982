"""kill -9 of the predictor, the memory service and one of two engines, each under load.

The real services run as processes on loopback (services/bench/chaos_stack.py), the gateway
in-process, 12 streams in flight all the time. For each kill: what the streams in flight and the
new ones got, within what time, and that the restarted service is used again without any action
(the goals of issue 21: answered within 2 s, recovery within 5 s; a shared CI machine gets slack).
The kills run in one module, in order, each restarting its service before the next.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from services.bench.chaos_faults import EngineRecovery, MemoryRecovery, PredictorRecovery, run_fault
from services.bench.chaos_load import ClosedLoopLoad, LoadShape
from services.bench.chaos_stack import ChaosStack, ChaosStackConfig

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]
# A 2-core machine shared with other jobs: the 2 s / 5 s goals, doubled.
ANSWER_LIMIT_S = 4.0
RECOVERY_LIMIT_S = 10.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory):
    stack = ChaosStack(ChaosStackConfig(log_dir=tmp_path_factory.mktemp("chaos")))
    await stack.start()
    yield stack
    await stack.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def load(stack):
    load = ClosedLoopLoad(stack.gateway_stub(), LoadShape(concurrency=12, timeout_s=60.0)).start()
    yield load
    await load.stop()


async def test_kill_predictor_falls_back_and_the_restart_is_used_again(stack, load):
    result = await run_fault(stack, load, "predictor", observe_s=1.5, recovery=PredictorRecovery())
    print(result.to_json())
    assert result.in_flight_codes.keys() == {"OK"}, result  # prediction happens before a stream starts
    assert result.new_codes.keys() == {"OK"}, result  # the gateway's prior replaces the prediction
    assert result.max_new_request_answer_s < ANSWER_LIMIT_S, result
    assert result.recovery_s < RECOVERY_LIMIT_S, result


async def test_kill_memory_keeps_streams_going_and_engines_register_again(stack, load):
    result = await run_fault(stack, load, "memory", observe_s=1.5, recovery=MemoryRecovery())
    print(result.to_json())
    assert result.in_flight_codes.keys() == {"OK"}, result  # swaps fall back to recompute
    assert result.new_codes.keys() == {"OK"}, result
    assert result.max_new_request_answer_s < ANSWER_LIMIT_S, result
    assert result.recovery_s < 2.0 * 2, result  # goal: re-registered within 2 s of its return
    stats = await stack.memory_stats()
    assert stats.ledger_consistent, stats.ledger_violations


async def test_kill_one_engine_fails_only_its_streams_and_is_expired_then_used_again(stack, load):
    result = await run_fault(stack, load, "engine-1", observe_s=1.0, recovery=EngineRecovery("engine-1"))
    print(result.to_json())
    assert set(result.in_flight_codes) <= {"OK", "UNAVAILABLE"}, result  # its own streams: UNAVAILABLE
    assert result.in_flight_codes.get("OK", 0) > 0, result  # engine-0's streams go on
    assert result.max_failure_notice_s < ANSWER_LIMIT_S, result
    assert set(result.new_codes) == {"OK"}, result  # new requests go to the survivor
    assert result.max_new_request_answer_s < ANSWER_LIMIT_S, result
    assert result.extra["memory_expired_engine_after_s"] < 3.0 + 2.0, result  # expire_after_s + a report period
    assert result.extra["ledger_consistent_after_expiry"], result
    assert result.recovery_s < RECOVERY_LIMIT_S, result


async def test_after_the_kills_every_block_and_slot_is_free(stack):
    for _ in range(100):  # the load's last streams may still be finishing
        stats = [await stack.engine_stats(name) for name in stack.engine_names]
        memory = await stack.memory_stats()
        if all(s.num_kv_blocks_used == 0 for s in stats) and memory.host.num_blocks_used == 0:
            break
        await asyncio.sleep(0.1)
    assert [s.num_kv_blocks_used for s in stats] == [0] * len(stats)
    assert memory.host.num_blocks_used == 0
    assert memory.ledger_consistent
