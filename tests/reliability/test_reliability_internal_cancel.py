"""A call cancelled inside a server ends UNAVAILABLE with a message, not a bare CANCELLED.

The 30-minute soak ended 12 of 17,576 streams CANCELLED with no message and nothing in any log. One
way a server does that: its handler awaits a call of its own (the gateway's engine or predictor
call) and that inner call is cancelled on the server's side (its channel closed under it), so the
handler ends with a CancelledError while its own client still waits; gRPC then cancels the outer
call silently, and the client cannot tell it from its own cancellation. Here a relay server streams
from a slow inner server and closes its inner channel mid-stream: the relay's client must get
UNAVAILABLE with INTERNAL_CANCEL_MESSAGE (it got CANCELLED before services/common/drain.py told the
two cases apart), and the relay must log where the cancellation came from.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from services.common.drain import INTERNAL_CANCEL_MESSAGE
from services.common.server import start_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def _slow_stream(request: bytes, context: grpc.aio.ServicerContext) -> object:
    """The inner server: a message every 50 ms, for ever."""
    while True:
        yield b"inner"
        await asyncio.sleep(0.05)


async def _serve(name: str, handler: grpc.RpcMethodHandler):
    generic = grpc.method_handlers_generic_handler(f"t.{name}", {"Stream": handler})
    return await start_server(
        host="127.0.0.1", port=0, register=lambda server: server.add_generic_rpc_handlers((generic,)), service_names=[]
    )


async def _read_all(call) -> tuple[grpc.StatusCode, str, int]:
    num_messages = 0
    try:
        async for _ in call:
            num_messages += 1
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or "", num_messages
    return grpc.StatusCode.OK, "", num_messages


async def test_an_inner_call_cancelled_under_a_handler_ends_unavailable_with_a_message_and_a_log(caplog):
    inner = await _serve("Inner", grpc.unary_stream_rpc_method_handler(_slow_stream))
    inner_channel = grpc.aio.insecure_channel(f"127.0.0.1:{inner.port}")

    async def relay(request: bytes, context: grpc.aio.ServicerContext) -> object:
        async for message in inner_channel.unary_stream("/t.Inner/Stream")(b"", timeout=30):
            yield message

    outer = await _serve("Relay", grpc.unary_stream_rpc_method_handler(relay))
    client_channel = grpc.aio.insecure_channel(f"127.0.0.1:{outer.port}")
    try:
        reading = asyncio.create_task(_read_all(client_channel.unary_stream("/t.Relay/Stream")(b"", timeout=30)))
        await asyncio.sleep(0.4)  # a few messages relayed
        with caplog.at_level(logging.WARNING, logger="services.common.drain"):
            await inner_channel.close()  # cancels the relay's inner call; its client is still there
            code, details, num_messages = await asyncio.wait_for(reading, 10.0)
    finally:
        await client_channel.close()
        await outer.stop(0.0)
        await inner.stop(0.0)
    assert num_messages >= 2
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, INTERNAL_CANCEL_MESSAGE)
    logged = [r for r in caplog.records if "/t.Relay/Stream" in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the trace says where the cancellation came from


async def test_a_client_that_leaves_still_cancels_the_handler_without_a_warning(caplog):
    cleaned_up = asyncio.Event()

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            async for message in _slow_stream(request, context):
                yield message
        finally:
            cleaned_up.set()

    server = await _serve("Leaving", grpc.unary_stream_rpc_method_handler(stream))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        with caplog.at_level(logging.WARNING, logger="services.common.drain"):
            call = channel.unary_stream("/t.Leaving/Stream")(b"", timeout=30)
            await call.read()
            call.cancel()  # the client leaves
            await asyncio.wait_for(cleaned_up.wait(), 5.0)  # the handler's clean-up ran
            await asyncio.sleep(0.1)
    finally:
        await channel.close()
        await server.stop(0.0)
    assert call.cancelled()
    assert not [r for r in caplog.records if "/t.Leaving/Stream" in r.getMessage()]
