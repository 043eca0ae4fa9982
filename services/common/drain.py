"""Drain on SIGTERM: in-flight calls finish, or end UNAVAILABLE at the drain deadline.

grpc.aio's own `server.stop(grace)` refuses new calls at once and lets running ones go on for
`grace` seconds, then cancels them: the client sees CANCELLED, the same status as its own
cancellation. `InFlightCalls` (an interceptor) remembers the task of every running call; at the
deadline `abort_all()` cancels those tasks and each call ends with UNAVAILABLE and a message saying
the server is shutting down, so a client knows to retry elsewhere. A servicer's own clean-up (the
engine's `finally: abort`, which frees the request's KV blocks) runs as for any cancellation.

A streaming call is not cancelled while gRPC is sending one of its messages (the handler suspended
at `yield`): the cancellation would land in gRPC's own send, outside this wrapper, and the call
would end silently, its client told only by gRPC's "Cancelling all calls" when the server's grace
ran out, its servicer closed only when the generator was collected (seen in ~2 of 12 drains on a
busy machine). Such a call is marked instead and ends UNAVAILABLE as soon as the send completes.

A handler can also end with a CancelledError that nothing cancelled it with: a call it awaits was
cancelled on its side (a channel closed under it, a cancelled inner task), while its own client
still waits. Re-raised, gRPC ends such a call CANCELLED with no message and logs nothing, and the
client cannot tell it from its own cancellation. It ends UNAVAILABLE with INTERNAL_CANCEL_MESSAGE
instead, and the server logs a warning with the trace of where the cancellation came from. A
handler cancelled by its client leaving or its deadline passing (gRPC cancels its task: the task
is `cancelling()`) stays cancelled.

Invariant: a task is in `_calls` exactly while its handler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from services.common.refusal import RefusalReason

DRAIN_DEADLINE_MESSAGE = "server is shutting down: the call did not finish within the drain deadline; retry"
INTERNAL_CANCEL_MESSAGE = "the call was cancelled inside the server, not by the client (see the server's log); retry"

log = logging.getLogger(__name__)


@dataclass
class _Call:
    """One running handler."""

    sending: bool = False  # a streaming handler suspended at `yield` while gRPC sends its message
    abort_requested: bool = False  # abort_all came while sending: end UNAVAILABLE once the send completes


class InFlightCalls(grpc.aio.ServerInterceptor):
    """Tracks running handlers; `abort_all` ends them UNAVAILABLE."""

    def __init__(self) -> None:
        self._calls: dict[asyncio.Task[Any], _Call] = {}
        self._aborting = False

    @property
    def num_in_flight(self) -> int:
        return len(self._calls)

    def abort_all(self) -> int:
        """Ends every running handler UNAVAILABLE (cancelled now, or after the send it is in); returns how many."""
        self._aborting = True
        calls = list(self._calls.items())
        for task, call in calls:
            if call.sending:
                call.abort_requested = True
            else:
                task.cancel()
        return len(calls)

    async def _on_cancel(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
        """In a handler that caught CancelledError: UNAVAILABLE when the drain cancelled it or nothing
        cancelled its task (a call inside it was cancelled), else (client gone, deadline) stay cancelled."""
        task = asyncio.current_task()
        if task is None:
            raise asyncio.CancelledError
        if task.cancelling() == 0:
            log.warning("%s: a call inside the handler was cancelled; ending it UNAVAILABLE", method, exc_info=True)
            await context.abort(grpc.StatusCode.UNAVAILABLE, INTERNAL_CANCEL_MESSAGE)
        if not self._aborting:
            raise asyncio.CancelledError
        task.uncancel()
        await _abort_unavailable(context)

    def _wrap_unary(self, behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            task = asyncio.current_task()
            assert task is not None  # a handler runs in a task
            self._calls[task] = _Call()
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                await self._on_cancel(context, method)
            finally:
                self._calls.pop(task, None)

        return handler

    def _wrap_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., AsyncIterator[Any]]:
        """behavior is an async generator (grpc's stubs type a method handler's stream as a sync iterator)."""

        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            task = asyncio.current_task()
            assert task is not None  # a handler runs in a task
            call = self._calls[task] = _Call()
            try:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        call.sending = True
                        yield response
                        call.sending = False
                        if call.abort_requested:
                            break  # leaving the block closes the servicer's generator (its clean-up runs)
                if call.abort_requested:
                    await _abort_unavailable(context)
            except asyncio.CancelledError:
                await self._on_cancel(context, method)
            finally:
                self._calls.pop(task, None)

        return handler

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        method = handler_call_details.method  # named in the log of an internal cancellation
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method), deserialize, serialize
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method), deserialize, serialize
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method), deserialize, serialize
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method), deserialize, serialize
            )
        return handler


async def _abort_unavailable(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, DRAIN_DEADLINE_MESSAGE, RefusalReason.DRAINING.metadata())
