"""Domain exceptions and the one place that maps them to gRPC status codes.

Servicers raise these; `StatusMappingInterceptor` turns them into a status with the exception's
message, so a client sees INVALID_ARGUMENT "top_p must be in (0, 1], got 1.5" and not INTERNAL.
Only an unexpected exception (a bug) becomes INTERNAL, and it is logged with its traceback.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from services.common.refusal import RefusalReason

log = logging.getLogger(__name__)


class AliseError(Exception):
    """Base of the errors a service reports to its caller; `status_code` says which status.

    A refusal (the request was not worked on: a queue cap, a deadline that cannot be met, a drain)
    names its `refusal_reason`, sent as the trailing metadata entry `alise-refusal-reason`.
    """

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, *args: object, refusal_reason: RefusalReason | None = None) -> None:
        super().__init__(*args)
        self.refusal_reason = refusal_reason  # None: not a refusal, or one without a machine-readable reason


class InvalidRequest(AliseError):
    """The request itself is wrong; retrying it unchanged cannot succeed."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class Overloaded(AliseError):
    """No capacity right now (queue full, KV pool cannot ever hold the request)."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotReady(AliseError):
    """A dependency is down or the service is still starting or draining; retry later."""

    status_code = grpc.StatusCode.UNAVAILABLE


class NotFound(AliseError):
    """The named object (request id, engine id) does not exist."""

    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(AliseError):
    """An object with this id already exists (e.g. a live request id)."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class DeadlineExceeded(AliseError):
    """The caller's deadline passed before the work finished."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(AliseError):
    """Missing or wrong credentials."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


async def _abort_with_status(error: Exception, context: grpc.aio.ServicerContext[Any, Any], behavior: Any) -> None:
    """Ends the call with the error's status; an unexpected exception (a bug) becomes INTERNAL."""
    if isinstance(error, _ABORT_ERRORS):
        raise error
    if isinstance(error, AliseError):
        reason = error.refusal_reason
        await context.abort(error.status_code, str(error), reason.metadata() if reason is not None else ())
    log.error("unexpected error in %s", behavior, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except Exception as error:
            await _abort_with_status(error, context, behavior)

    return handler


def _wrap_stream(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    """behavior is an async generator (grpc's stubs type a method handler's stream as a sync iterator)."""

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except Exception as error:
            await _abort_with_status(error, context, behavior)

    return handler


# context.abort() raises this; it must pass through untouched.
_ABORT_ERRORS: tuple[type[BaseException], ...] = (grpc.aio.AbortError,)


class StatusMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps `AliseError` subclasses raised by any handler (unary or streaming either way) to statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:  # a client stream: same awaitable shape as unary-unary
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # bidirectional: same async-iterator shape as unary-stream
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
