"""Builds the memory service from its config and starts it (tests use port 0, __main__ the flags)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services.common.contracts import memory_service_pb2, memory_service_pb2_grpc
from services.common.metrics_server import serve_metrics
from services.common.server import ServiceHandle, start_server
from services.memory.config import MemoryConfig
from services.memory.eviction_policy import PlanSettings
from services.memory.host_region import HostRegion, default_region_path
from services.memory.ledger import KvLedger
from services.memory.metrics import memory_registry
from services.memory.servicer import MemoryServicer
from services.memory.swap_manager import SwapManager

log = logging.getLogger(__name__)
SERVICE_NAME = memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name


def build_swap_manager(config: MemoryConfig) -> SwapManager:
    """A fresh, empty ledger and host tier sized by `config` (with its region file, if any)."""
    num_slots = config.host_tier_capacity_bytes // config.host_tier_block_bytes
    ledger = KvLedger(
        host_tier_capacity_bytes=num_slots * config.host_tier_block_bytes,
        host_tier_block_bytes=config.host_tier_block_bytes,
        stale_after_s=config.stale_after_s,
    )
    region = None
    if num_slots:
        path = Path(config.host_tier_path) if config.host_tier_path else default_region_path()
        region = HostRegion(path, num_slots, config.host_tier_block_bytes)
    settings = PlanSettings(
        slot_bytes=config.host_tier_block_bytes,
        max_relative_error=config.max_kv_relative_error,
        assumed_bytes_per_s=config.assumed_transfer_bytes_per_s,
    )
    return SwapManager(ledger, region, settings)


async def _expire_silent_engines(swaps: SwapManager, config: MemoryConfig) -> None:
    """Every report interval, unregisters the engines silent for longer than config.expire_after_s."""
    while True:
        await asyncio.sleep(config.report_interval_s)
        for engine_id in swaps.expire_silent(config.expire_after_s):
            log.warning(
                "engine %s sent no report for %.1f s: unregistered, its ledger entry and host-tier slots released",
                engine_id,
                config.expire_after_s,
            )


async def start(config: MemoryConfig) -> ServiceHandle:
    """Starts serving alise.v1.MemoryService (plus health and reflection) on config.host:config.port."""
    swaps = build_swap_manager(config)
    servicer = MemoryServicer(swaps, report_interval_s=config.report_interval_s)
    running = await start_server(
        host=config.host,
        port=config.port,
        register=lambda server: memory_service_pb2_grpc.add_MemoryServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        tls=config.tls,
        require_client_cert=config.tls is not None and config.tls.verifies_peers,
    )
    handle = ServiceHandle(running)
    expiry = asyncio.create_task(_expire_silent_engines(swaps, config), name="engine-expiry")

    async def stop_expiry() -> None:
        expiry.cancel()
        await asyncio.gather(expiry, return_exceptions=True)

    handle.on_stop.append(stop_expiry)
    if swaps.region is not None:
        region = swaps.region

        async def close_region() -> None:
            region.close()

        handle.on_stop.append(close_region)
    registry = memory_registry(swaps, asyncio.get_running_loop())
    await serve_metrics(handle, registry, config.host, config.metrics_port)
    return handle
