"""The drain deadline reaches every streaming call, also one caught while gRPC sends its message.

A server stopping with streams in flight ends those still running at the drain deadline with
UNAVAILABLE and "server is shutting down ..." (services/common/drain.py). A stream whose handler was
suspended in gRPC's own send at that moment used to be cancelled there, outside the drain's
wrapper: its client got gRPC's "Cancelling all calls" only when the server's grace ran out, and its
servicer's clean-up waited for garbage collection (~2 of 12 busy runs of the engine's drain test).
Here a client that reads slowly keeps the handler in that send, so every run takes that path.
Last, the real engine's drain: new calls refused before any handler, the running stream finished.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.common.contracts import common_pb2, engine_service_pb2, engine_service_pb2_grpc
from services.common.drain import DRAIN_DEADLINE_MESSAGE
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.common.server import start_server
from services.engine import app as engine_app
from services.engine.config import EngineConfig

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]
MESSAGE_BYTES = 64 * 1024  # a few of these fill the client's flow-control window


class Streamer:
    """Streams MESSAGE_BYTES messages until stopped; records when its own clean-up ran."""

    def __init__(self) -> None:
        self.cleaned_up_s: float | None = None

    async def stream(self, request: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            while True:
                yield b"x" * MESSAGE_BYTES
                await asyncio.sleep(0)
        finally:
            self.cleaned_up_s = time.monotonic()  # the engine frees the request's KV blocks here


@pytest.mark.parametrize("read_pause_s", [0.0, 0.02])  # 0.02: the handler waits in gRPC's send
async def test_a_stream_in_flight_ends_unavailable_at_the_drain_deadline(read_pause_s):
    streamer = Streamer()
    handler = grpc.unary_stream_rpc_method_handler(streamer.stream)
    generic = grpc.method_handlers_generic_handler("t.Streamer", {"Stream": handler})
    running = await start_server(
        host="127.0.0.1", port=0, register=lambda server: server.add_generic_rpc_handlers((generic,)), service_names=[]
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    call = channel.unary_stream("/t.Streamer/Stream")(b"", timeout=30)

    async def read_all() -> tuple[grpc.StatusCode, str]:
        try:
            async for _ in call:
                await asyncio.sleep(read_pause_s)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, ""

    reading = asyncio.create_task(read_all())
    try:
        await asyncio.sleep(0.3)
        stop_began_s = time.monotonic()
        await running.stop(0.5)  # drain deadline 0.5 s; gRPC's own grace is 3 s longer
        code, details = await asyncio.wait_for(reading, 20.0)
    finally:
        await channel.close()
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, DRAIN_DEADLINE_MESSAGE)
    assert streamer.cleaned_up_s is not None and streamer.cleaned_up_s - stop_began_s < 2.0  # at the deadline


def _engine_request(request_id: str, max_tokens: int):
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return engine_service_pb2.EngineServiceGenerateRequest(
        request_id=request_id, prompt_token_ids=[1, 415, 2936, 9060], sampling=sampling
    )


async def test_an_engine_draining_refuses_new_calls_before_any_handler_and_finishes_the_running_ones():
    """The engine has no draining flag of its own (its servicer's unused start_draining() was removed):
    the drain that SIGTERM starts (ServiceHandle.stop) closes the listener and sends GOAWAY, so a new
    call fails UNAVAILABLE at once without reaching the servicer, while a running stream goes on."""
    config = EngineConfig(
        port=0, model=DUMMY_TINY_MODEL, dtype="float32", device="cpu", cpu_threads=1, num_kv_blocks=100, drain_s=0.0
    )
    engine = await engine_app.start(config)
    channel = grpc.aio.insecure_channel(engine.address)
    stub = engine_service_pb2_grpc.EngineServiceStub(channel)
    try:
        running = stub.Generate(_engine_request("running", 64), timeout=30)
        num_tokens = len((await running.read()).token_ids)  # admitted and decoding
        stopping = asyncio.create_task(engine.stop(10.0))  # drain deadline far away
        await asyncio.sleep(0.1)
        began_s = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(_engine_request("new", 4), timeout=5).read()
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - began_s < 1.0
        while (message := await running.read()) is not grpc.aio.EOF:
            num_tokens += len(message.token_ids)
        assert num_tokens == 64  # the running stream finished whole within the drain
        await asyncio.wait_for(stopping, 10.0)
    finally:
        await channel.close()
