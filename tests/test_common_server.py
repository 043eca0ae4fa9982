"""Shared server plumbing: health, reflection (what grpcurl uses), and error-to-status mapping."""

import asyncio

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common.contracts import memory_service_pb2, memory_service_pb2_grpc
from services.common.errors import Overloaded
from services.common.health import is_serving
from services.common.server import ServiceHandle, start_server


class _FailingMemory(memory_service_pb2_grpc.MemoryServiceServicer):
    async def GetStats(self, request, context):
        raise Overloaded("ledger is busy")

    async def ReportUsage(self, request, context):
        raise KeyError("a bug")


@pytest.fixture
async def server():
    running = await start_server(
        host="127.0.0.1",
        port=0,
        register=lambda s: memory_service_pb2_grpc.add_MemoryServiceServicer_to_server(_FailingMemory(), s),
        service_names=["alise.v1.MemoryService"],
    )
    handle = ServiceHandle(running)
    yield handle
    await handle.stop()


async def test_health_reflection_and_status_mapping(server):
    assert await is_serving(server.address)
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetStats(memory_service_pb2.MemoryServiceGetStatsRequest())
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == "ledger is busy"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReportUsage(memory_service_pb2.ReportUsageRequest())
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert "KeyError" in caught.value.details()


def _reflected_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


async def test_reflection_lists_the_service_and_health(server):
    services = await asyncio.to_thread(_reflected_services, server.address)
    assert {"alise.v1.MemoryService", "grpc.health.v1.Health"} <= services
