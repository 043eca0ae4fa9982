"""Client disconnects cancel the generation: the pipeline's generator is closed at once.

Closing the pipeline's async generator leaves its `aclosing(engine stream)` block, which cancels the
engine call; the engine then frees the request's KV blocks. Two cases:

- waiting for a result (non-streaming, or the first chunk of a stream): the wait races the
  ASGI `http.disconnect` message and the work is cancelled when the client goes first;
- streaming: Starlette cancels the response task when the client goes, and EventStreamResponse
  closes the event generator whatever state it was left in.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Awaitable, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before the response was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Awaits `work`; cancels it and raises ClientGone if the client disconnects first."""
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait((work_task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler itself is cancelled (server shutdown)
        for task in (watcher, work_task):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    if work_task.cancelled():
        raise ClientGone()
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response that always closes its event generator when it ends.

    Starlette cancels the sending task on a disconnect; when that happens while the generator is
    parked at a `yield`, the generator would otherwise stay open until garbage collection, and
    the engine would keep generating for nobody.
    """

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()  # type: ignore[attr-defined]
