"""The engine thread: runs EngineCore steps back to back and hands results to asyncio.

Why a thread: a model step is blocking torch work; gRPC handlers live on the asyncio loop. They
talk through two one-way channels and share no mutable state:

    asyncio handlers --submit/abort--> inbox (SimpleQueue) --> engine thread (owns the scheduler)
    engine thread --call_soon_threadsafe--> per-request asyncio.Queue --> the request's handler

The engine thread sleeps on the inbox while there is no work, so an idle engine burns no CPU.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Callable, NamedTuple

from services.engine.admission_control import EMPTY_PROFILE, PROFILE_INTERVAL_S, QueueProfile, take_queue_profile
from services.engine.drain_rate import DrainRate
from services.engine.engine_core import EngineCore
from services.engine.request import FinishReason, Request
from services.engine.scheduler import StepResult
from services.engine.scheduler.steady import StepResults
from services.engine.stats import EngineSnapshot, take_snapshot

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5  # how long the idle engine thread sleeps on the inbox between checks
# Between steps the snapshot (O(live requests): 1.9 ms at 1,000 live requests, a tenth of a step) is
# refreshed at most this often while work remains, and always when the engine goes idle.
SNAPSHOT_INTERVAL_S = 0.02


class InboxCommand(enum.Enum):
    """What the asyncio side asks of the engine thread."""

    ADD = "add"  # schedule `request`; its events go to `events`
    ABORT = "abort"  # abort `request_id` (its handler gets a final ABORTED event)
    WAKE = "wake"  # nothing to apply: ends the idle thread's wait on the inbox so it sees stop() at once


@dataclass(frozen=True)
class InboxMessage:
    """One command on the inbox; the fields its command does not use stay at their defaults."""

    command: InboxCommand
    request: Request | None = None  # ADD
    events: asyncio.Queue | None = None  # ADD: the request's event queue (asyncio side)
    request_id: str = ""  # ABORT


@dataclass(frozen=True)
class RequestTimings:
    """Engine-side latency figures of a finished request, seconds."""

    queue_time_s: float  # arrival -> first step that computed its tokens
    time_to_first_token_s: float  # arrival -> first output token
    end_to_end_s: float  # arrival -> finish
    num_preemptions: int


class EngineEvent(NamedTuple):
    """New tokens for one request; the last event of a request carries finish_reason and timings. A tuple:
    a busy engine makes one per running request per step (on the asyncio thread, see _deliver_tokens)."""

    request_id: str
    new_token_ids: list[int]
    finish_reason: FinishReason | None = None
    timings: RequestTimings | None = None
    error: str | None = None  # set when the engine failed the request (step raised)


# Called on the engine thread once per finished request (the metrics' histograms): must be cheap.
FinishObserver = Callable[[Request, FinishReason, RequestTimings], None]


class EngineLoop:
    """Owns the EngineCore on its own thread."""

    def __init__(self, core: EngineCore, engine_id: str, on_finish: FinishObserver | None = None) -> None:
        self.core = core
        self.engine_id = engine_id
        self._on_finish = on_finish
        self._inbox: queue.SimpleQueue[InboxMessage] = queue.SimpleQueue()
        self._sinks: dict[str, asyncio.Queue] = {}  # engine-thread side: where events go
        self._requests: dict[str, Request] = {}  # engine-thread side: live requests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.drain_rate = DrainRate()  # engine thread: fed after each step, read by the snapshot and profile
        self.snapshot: EngineSnapshot = take_snapshot(core, engine_id, 0.0)
        self._snapshot_at_s = time.monotonic()
        # Live requests' predicted work for admission (services/engine/admission_control.py);
        # refreshed at most every PROFILE_INTERVAL_S, read by the asyncio thread as one attribute.
        self.queue_profile: QueueProfile = EMPTY_PROFILE

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Aborts every live request and joins the thread."""
        self._stopping.set()
        self._inbox.put(InboxMessage(InboxCommand.WAKE))
        self._thread.join(timeout_s)

    def submit(self, request: Request) -> asyncio.Queue:
        """Queues a request (from the asyncio thread); returns the queue its events arrive on."""
        events: asyncio.Queue = asyncio.Queue()
        self._inbox.put(InboxMessage(InboxCommand.ADD, request=request, events=events))
        return events

    def abort(self, request_id: str) -> None:
        """Asks the engine thread to abort a request; its handler gets a final ABORTED event."""
        self._inbox.put(InboxMessage(InboxCommand.ABORT, request_id=request_id))

    # -- engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._drain_inbox(block=not self.core.scheduler.has_work)
            if self._stopping.is_set():
                break
            try:
                results = self.core.step()
            except Exception:  # a failed step fails its requests, not the engine
                log.exception("engine step failed; failing all live requests")
                self._fail_all("engine step failed")
                continue
            self.drain_rate.on_step(self.core.last_step)
            self._emit_step(results)
            if not self.core.scheduler.has_work or time.monotonic() - self._snapshot_at_s >= SNAPSHOT_INTERVAL_S:
                self._take_snapshot()
            self._refresh_queue_profile()
        for request_id in list(self._requests):
            self._abort_now(request_id)

    def _drain_inbox(self, *, block: bool) -> None:
        try:
            message = self._inbox.get(timeout=IDLE_WAIT_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(message)
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                break
        self._take_snapshot()  # once per burst: it is O(requests)
        self._refresh_queue_profile()

    def _take_snapshot(self) -> None:
        self.snapshot = take_snapshot(self.core, self.engine_id, self.drain_rate.seconds_per_output_token)
        self._snapshot_at_s = time.monotonic()

    def _refresh_queue_profile(self) -> None:
        if time.monotonic() - self.queue_profile.taken_at_s >= PROFILE_INTERVAL_S:
            self.queue_profile = take_queue_profile(self.core, self.drain_rate.seconds_per_output_token)

    def _apply(self, message: InboxMessage) -> None:
        if message.command is InboxCommand.ADD:
            request = message.request
            self._sinks[request.request_id] = message.events
            self._requests[request.request_id] = request
            self.core.add(request)
        elif message.command is InboxCommand.ABORT:
            self._abort_now(message.request_id)
        elif message.command is InboxCommand.WAKE:
            return  # taking it off the inbox was the point: _run checks _stopping next
        else:
            raise ValueError(f"unknown engine inbox command {message.command!r}")

    def _abort_now(self, request_id: str) -> None:
        if self.core.abort(request_id) is not None:
            self._emit(request_id, [], FinishReason.ABORTED)

    def _fail_all(self, message: str) -> None:
        for request_id in list(self._requests):
            self.core.abort(request_id)
            self._publish(request_id, EngineEvent(request_id, [], FinishReason.ABORTED, error=message))

    def _emit_step(self, results: Sequence[StepResult]) -> None:
        """Streams a step's results: the steady decode columns (StepResults) as one hand-off to the asyncio
        thread instead of one call_soon_threadsafe per request (a lock and a self-pipe write each), the
        requests that finished one by one (their last event carries timings), then the other results."""
        if isinstance(results, StepResults):
            if results.decode_ids:
                self._emit_columns(results.decode_ids, results.decode_tokens, results.decode_reasons)
            results = results.others
        for result in results:
            self._emit(result.request_id, result.new_token_ids, result.finish_reason)

    def _emit_columns(self, request_ids: list[str], tokens: list[int], reasons: list[FinishReason | None] | None):
        """One token per request; a finished request's token goes with its final event (_emit), not twice."""
        going_on_ids, going_on_tokens = request_ids, tokens
        if reasons is not None:
            going_on = [reason is None for reason in reasons]
            going_on_ids, going_on_tokens = list(compress(request_ids, going_on)), list(compress(tokens, going_on))
        # The sinks are looked up here, on the engine thread that owns them (a request finished next step
        # drops its sink before this hand-off runs on the asyncio thread).
        sinks = list(map(self._sinks.get, going_on_ids))
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_deliver_tokens, going_on_ids, going_on_tokens, sinks)
        if reasons is not None:
            for request_id, token, reason in zip(request_ids, tokens, reasons):
                if reason is not None:
                    self._emit(request_id, [token], reason)

    def _emit(self, request_id: str, token_ids: list[int], reason: FinishReason | None) -> None:
        timings = None
        if reason is not None:
            request = self._requests[request_id]
            timings = _timings_of(request, time.monotonic())
            if self._on_finish is not None:
                self._on_finish(request, reason, timings)
        self._publish(request_id, EngineEvent(request_id, token_ids, reason, timings))

    def _publish(self, request_id: str, event: EngineEvent) -> None:
        sink = self._sinks.get(request_id)
        if event.finish_reason is not None:
            self._sinks.pop(request_id, None)
            self._requests.pop(request_id, None)
        if sink is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(sink.put_nowait, event)


def _deliver_tokens(request_ids: list[str], tokens: list[int], sinks: list[asyncio.Queue | None]) -> None:
    """On the asyncio thread: one token event per request of a step's decode columns, in their order."""
    for request_id, token, sink in zip(request_ids, tokens, sinks):
        if sink is not None:
            sink.put_nowait(EngineEvent(request_id, [token]))


def _timings_of(request: Request, now_s: float) -> RequestTimings:
    def since_arrival(t: float | None) -> float:
        return (t if t is not None else now_s) - request.arrival_time_s

    return RequestTimings(
        queue_time_s=since_arrival(request.first_scheduled_time_s),
        time_to_first_token_s=since_arrival(request.first_token_time_s),
        end_to_end_s=now_s - request.arrival_time_s,
        num_preemptions=request.num_preemptions,
    )
