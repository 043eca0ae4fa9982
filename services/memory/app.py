"""Builds the memory service from its config and starts it (tests use port 0, __main__ the flags)."""

from __future__ import annotations

from services.common.contracts import memory_service_pb2, memory_service_pb2_grpc
from services.common.server import ServiceHandle, start_server
from services.memory.config import MemoryConfig
from services.memory.ledger import KvLedger
from services.memory.servicer import MemoryServicer

SERVICE_NAME = memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name


def build_servicer(config: MemoryConfig) -> MemoryServicer:
    """The servicer over a fresh, empty ledger sized by `config`."""
    ledger = KvLedger(
        host_tier_capacity_bytes=config.host_tier_capacity_bytes,
        host_tier_block_bytes=config.host_tier_block_bytes,
        stale_after_s=config.stale_after_s,
    )
    return MemoryServicer(ledger, report_interval_s=config.report_interval_s)


async def start(config: MemoryConfig) -> ServiceHandle:
    """Starts serving alise.v1.MemoryService (plus health and reflection) on config.host:config.port."""
    servicer = build_servicer(config)
    running = await start_server(
        host=config.host,
        port=config.port,
        register=lambda server: memory_service_pb2_grpc.add_MemoryServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
    )
    return ServiceHandle(running)
