"""The engine thread's inbox: typed commands, a request's events end with its finish reason, an
abort ends a running request with ABORTED, and WAKE is an explicit no-op (it only ends the idle wait)."""

from __future__ import annotations

import asyncio

import pytest

from services.engine.engine_loop import EngineEvent, EngineLoop, InboxCommand, InboxMessage
from services.engine.request import FinishReason
from tests.engine_model import greedy, make_core, new_request

EVENT_TIMEOUT_S = 60.0


async def _events_until_finish(events: asyncio.Queue) -> list[EngineEvent]:
    received = [await asyncio.wait_for(events.get(), EVENT_TIMEOUT_S)]
    while received[-1].finish_reason is None:
        received.append(await asyncio.wait_for(events.get(), EVENT_TIMEOUT_S))
    return received


def _loop() -> EngineLoop:
    return EngineLoop(make_core(num_blocks=32, block_size=4, token_budget=64), engine_id="test-engine")


async def test_submit_streams_tokens_and_abort_ends_a_request_with_aborted():
    engine = _loop()
    engine.start(asyncio.get_running_loop())
    try:
        done = await _events_until_finish(engine.submit(new_request("short", [5, 6, 7], greedy(3))))
        assert sum(len(event.new_token_ids) for event in done) == 3
        assert done[-1].finish_reason is FinishReason.LENGTH and done[-1].timings is not None
        events = engine.submit(new_request("long", [5, 6, 7], greedy(10_000)))
        first = await asyncio.wait_for(events.get(), EVENT_TIMEOUT_S)
        assert first.finish_reason is None and first.new_token_ids
        engine.abort("long")
        assert (await _events_until_finish(events))[-1].finish_reason is FinishReason.ABORTED
    finally:
        await asyncio.to_thread(engine.stop)
    assert not engine._thread.is_alive()


def test_wake_changes_nothing_and_an_unknown_command_is_refused():
    engine = _loop()
    before = engine.snapshot
    engine._apply(InboxMessage(InboxCommand.WAKE))
    assert not engine.core.scheduler.has_work and engine.snapshot == before
    with pytest.raises(ValueError, match="unknown engine inbox command"):
        engine._apply(InboxMessage("add"))  # a bare string is not a command
