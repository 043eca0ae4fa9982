"""A new channel reaches a server that has just started on a port another open channel saw dead.

With gRPC's process-wide subchannel pool the new channel shares the old channel's subchannel, still
in reconnect backoff, and fails at once with the stale "Connection refused": a restarted peer on its
fixed port looked down, and a CI run failed when a test's fake engine got the port of an earlier
test's stopped one. GRPC_OPTIONS gives every channel its own subchannels.
"""

from __future__ import annotations

import grpc
import pytest

from services.common.contracts import engine_service_pb2, engine_service_pb2_grpc
from services.common.grpc_options import GRPC_OPTIONS
from tests.gateway_fakes import FakeEngine, start_fake_engine

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def _model_info(channel: grpc.aio.Channel) -> engine_service_pb2.EngineServiceGetModelInfoResponse:
    stub = engine_service_pb2_grpc.EngineServiceStub(channel)
    return await stub.GetModelInfo(engine_service_pb2.EngineServiceGetModelInfoRequest(), timeout=2)


async def test_a_server_back_on_its_port_is_reached_by_a_new_channel_at_once():
    stopped = await start_fake_engine(FakeEngine())
    port = int(stopped.address.rsplit(":", 1)[1])
    await stopped.stop(0)
    target = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(target, options=GRPC_OPTIONS) as old:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _model_info(old)  # nothing listens: this channel's subchannel enters its backoff
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        server = await start_fake_engine(FakeEngine(), port=port)
        try:
            async with grpc.aio.insecure_channel(target, options=GRPC_OPTIONS) as new:
                await _model_info(new)  # raised UNAVAILABLE "Connection refused" with the shared pool
        finally:
            await server.stop(0)
