"""Admission by the wait for a place in the running batch (services/engine/admission_slot_wait.py)."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from services.common.contracts import common_pb2, engine_service_pb2, engine_service_pb2_grpc
from services.common.errors import Overloaded
from services.common.refusal import RefusalReason, refusal_reason_of
from services.engine.admission_control import AdmissionControl, AdmissionLimits, QueueProfile
from services.engine.admission_slot_wait import RunningPlaces, steps_until_place
from services.engine.app import start
from services.engine.config import EngineConfig
from tests.engine_configs import tiny_engine_config


def _places(remaining: dict[str, float], *, max_num_seqs: int = 4, steps_since: int = 0) -> RunningPlaces:
    return RunningPlaces(tuple(remaining.items()), max_num_seqs, num_steps=10, steps_now=lambda: 10 + steps_since)


def test_a_place_frees_after_the_running_requests_remaining_tokens_counted_from_the_profile():
    running = {"a": 5.0, "b": 3.0, "c": 7.0, "d": 2.0}
    live = set(running)
    assert steps_until_place(_places(running), 4, live.__contains__) == 2.0  # d's last token in 2 steps
    # a step later (the engine's counter moved on): d ends in the step under way
    assert steps_until_place(_places(running, steps_since=1), 4, live.__contains__) == 1.0
    # one request admitted meanwhile (live, not running at the profile) takes d's place: the next is b's
    assert steps_until_place(_places(running, steps_since=1), 5, (live | {"x"}).__contains__) == 2.0
    # d finished and was released: its place is free now
    live.discard("d")
    assert steps_until_place(_places(running), 3, live.__contains__) == 0.0


def test_a_batch_with_room_has_no_wait_and_a_queue_deeper_than_the_batch_has_no_place():
    live = {"a", "b"}
    assert steps_until_place(_places({"a": 9.0, "b": 9.0}), 2, live.__contains__) == 0.0
    assert steps_until_place(_places({"a": 9.0, "b": 9.0}, max_num_seqs=0), 2, live.__contains__) == 0.0
    running = {name: 9.0 for name in "abcd"}
    assert math.isinf(steps_until_place(_places(running), 8, lambda request_id: True))


def _profile(places: RunningPlaces) -> QueueProfile:
    return QueueProfile((), (), True, 0.002, 0.0, 0.0, 0.0, places=places)


def test_admission_refuses_at_once_when_no_place_frees_within_the_bound_and_zero_is_off():
    control = AdmissionControl(AdmissionLimits(64, 10_000, 0.0, max_queue_wait_steps=1))
    for request_id in "abcd":
        control.admit(request_id, 10, 32.0, None, _profile(_places({})))
    full = _profile(_places({"a": 5.0, "b": 3.0, "c": 7.0, "d": 2.0}))
    with pytest.raises(Overloaded) as refused:
        control.admit("e", 10, 32.0, None, full)
    assert refused.value.refusal_reason == RefusalReason.QUEUE_FULL
    assert "no place frees for a new request within 1 step(s) (the next place in 2 steps" in str(refused.value)
    assert "e" not in control and control.num_rejected_full == 1
    a_step_later = _profile(_places({"a": 5.0, "b": 3.0, "c": 7.0, "d": 2.0}, steps_since=1))
    control.admit("e", 10, 32.0, None, a_step_later)  # d ends in the step under way: e starts next
    off = AdmissionControl(AdmissionLimits(64, 10_000, 0.0))
    for request_id in "abcde":
        off.admit(request_id, 10, 32.0, None, full)


def _engine_config(max_queue_wait_steps: float) -> EngineConfig:
    return tiny_engine_config(
        engine_id="queue-wait",
        num_kv_blocks=64,
        max_num_seqs=2,
        max_queue_wait_steps=max_queue_wait_steps,
    )


def _request(request_id: str, max_tokens: int) -> engine_service_pb2.EngineServiceGenerateRequest:
    params = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return engine_service_pb2.EngineServiceGenerateRequest(
        request_id=request_id, prompt_token_ids=[1, 415, 2936, 9060], sampling=params
    )


async def _third_request_behind_a_full_batch(max_queue_wait_steps: float) -> tuple[grpc.StatusCode, str, str]:
    """Two long streams fill a batch of 2; a third request arrives once both are running."""
    handle = await start(_engine_config(max_queue_wait_steps))
    channel = grpc.aio.insecure_channel(handle.address)
    stub = engine_service_pb2_grpc.EngineServiceStub(channel)
    try:
        long_calls = [stub.Generate(_request(f"long-{index}", 200)) for index in range(2)]
        for call in long_calls:
            await call.read()  # its first token: both hold a place for ~200 more steps
        await asyncio.sleep(0.2)  # the queue profile has seen them running
        call = stub.Generate(_request("third", 4))
        try:
            async for _ in call:
                pass
            return grpc.StatusCode.OK, "", ""
        except grpc.aio.AioRpcError as error:
            reason = refusal_reason_of(error.trailing_metadata())
            return error.code(), error.details() or "", "" if reason is None else reason.name
        finally:
            for long_call in long_calls:
                long_call.cancel()
    finally:
        await channel.close()
        await handle.stop()


@pytest.mark.asyncio
async def test_an_engine_with_a_full_batch_refuses_a_request_it_cannot_start_within_the_bound():
    code, details, reason = await _third_request_behind_a_full_batch(1.0)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == "QUEUE_FULL"
    assert "running batch is full and no place frees for a new request within 1 step(s)" in details


@pytest.mark.asyncio
async def test_without_the_bound_the_same_request_waits_for_a_place():
    code, _, _ = await asyncio.wait_for(_third_request_behind_a_full_batch(0.0), timeout=120.0)
    assert code == grpc.StatusCode.OK
