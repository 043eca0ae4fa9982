"""Undecodable request bytes become INVALID_ARGUMENT with a plain message.

Left to itself, grpc.aio runs the request deserializer outside every handler and interceptor, so
bytes that are not the method's protobuf message (or a string field holding invalid UTF-8, which
protobuf refuses to parse) end the call UNKNOWN "Unexpected <class '...DecodeError'>". This
interceptor wraps each method's deserializer: a failed parse yields an `UndecodableRequest` marker
instead of raising, and the wrapped handler answers the marker with INVALID_ARGUMENT before any
servicer code runs. Streamed requests are checked message by message as the servicer reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from services.common.errors import InvalidRequest


@dataclass(frozen=True)
class UndecodableRequest:
    """What the guarded deserializer returns for bytes it cannot parse."""

    message_name: str  # the protobuf message the method expects
    reason: str  # protobuf's own description of the failure


def _guarded_deserializer(deserialize: Callable[[bytes], Any] | None, name: str) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def guarded(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, UnicodeDecodeError, ValueError) as error:
            return UndecodableRequest(name, str(error) or type(error).__name__)

    return guarded


def _message(marker: UndecodableRequest) -> str:
    return f"request is not a valid {marker.message_name} message (invalid protobuf or UTF-8): {marker.reason}"


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, UndecodableRequest):
            raise InvalidRequest(_message(request))  # inside the handler: the status mapping maps it
        yield request


# A method handler's behavior: a coroutine function, or an async generator function for a streamed
# response (grpc's stubs type the latter as a sync iterator, hence Callable[..., Any]).
Behavior = Callable[..., Any]
Context = grpc.aio.ServicerContext[Any, Any]


def _wrap_unary_request(behavior: Behavior, is_streaming_response: bool) -> Behavior:
    if is_streaming_response:

        async def stream_handler(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, UndecodableRequest):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
            async for response in behavior(request, context):
                yield response

        return stream_handler

    async def unary_handler(request: Any, context: Context) -> Any:
        if isinstance(request, UndecodableRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(request))
        return await behavior(request, context)

    return unary_handler


def _wrap_stream_request(behavior: Behavior, is_streaming_response: bool) -> Behavior:
    if is_streaming_response:

        async def stream_handler(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            async for response in behavior(_checked_stream(requests), context):
                yield response

        return stream_handler

    async def unary_handler(requests: AsyncIterator[Any], context: Context) -> Any:
        return await behavior(_checked_stream(requests), context)

    return unary_handler


def _message_name(handler: grpc.RpcMethodHandler[Any, Any], handler_call_details: grpc.HandlerCallDetails) -> str:
    """`alise.v1.GenerateRequest` when the deserializer is a message class's FromString, else the method."""
    message_class = getattr(handler.request_deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    if descriptor is not None:
        return str(descriptor.full_name)
    return f"{handler_call_details.method} request"


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):
    """Outermost interceptor of every alise server (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        deserialize = _guarded_deserializer(handler.request_deserializer, _message_name(handler, handler_call_details))
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_request(handler.unary_unary, False), deserialize, serialize
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_unary_request(handler.unary_stream, True), deserialize, serialize
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_stream_request(handler.stream_unary, False), deserialize, serialize
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream_request(handler.stream_stream, True), deserialize, serialize
            )
        return handler
