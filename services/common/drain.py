"""Drain on SIGTERM: in-flight calls finish, or end UNAVAILABLE at the drain deadline.

grpc.aio's own `server.stop(grace)` refuses new calls at once and lets running ones go on for
`grace` seconds, then cancels them: the client sees CANCELLED, the same status as its own
cancellation. `InFlightCalls` (an interceptor) remembers the task of every running call; at the
deadline `abort_all()` cancels those tasks and each call ends with UNAVAILABLE and a message saying
the server is shutting down, so a client knows to retry elsewhere. A servicer's own clean-up (the
engine's `finally: abort`, which frees the request's KV blocks) runs as for any cancellation.

Invariant: a task is in `_tasks` exactly while its handler runs.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

DRAIN_DEADLINE_MESSAGE = "server is shutting down: the call did not finish within the drain deadline; retry"


class InFlightCalls(grpc.aio.ServerInterceptor):
    """Tracks running handlers; `abort_all` ends them UNAVAILABLE."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._aborting = False

    @property
    def num_in_flight(self) -> int:
        return len(self._tasks)

    def abort_all(self) -> int:
        """Cancels every running handler (each answers UNAVAILABLE); returns how many."""
        self._aborting = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def _on_cancel(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """In a cancelled handler: UNAVAILABLE when the drain cancelled it, else stay cancelled."""
        task = asyncio.current_task()
        if not self._aborting or task is None:
            raise asyncio.CancelledError
        task.uncancel()
        await context.abort(grpc.StatusCode.UNAVAILABLE, DRAIN_DEADLINE_MESSAGE)

    def _wrap_unary(self, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            task = asyncio.current_task()
            assert task is not None  # a handler runs in a task
            self._tasks.add(task)
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                await self._on_cancel(context)
            finally:
                self._tasks.discard(task)

        return handler

    def _wrap_stream(self, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        """behavior is an async generator (grpc's stubs type a method handler's stream as a sync iterator)."""

        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            task = asyncio.current_task()
            assert task is not None  # a handler runs in a task
            self._tasks.add(task)
            try:
                async for response in behavior(request, context):
                    yield response
            except asyncio.CancelledError:
                await self._on_cancel(context)
            finally:
                self._tasks.discard(task)

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
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._wrap_unary(handler.unary_unary), deserialize, serialize)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._wrap_stream(handler.unary_stream), deserialize, serialize)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._wrap_unary(handler.stream_unary), deserialize, serialize)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream), deserialize, serialize
            )
        return handler
