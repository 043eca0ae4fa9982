"""Client side of grpc.health.v1: wait until a peer reports SERVING."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def is_serving(address: str, *, service: str = "", timeout_s: float = 1.0) -> bool:
    """One health check; False on any error (refused, timeout, NOT_SERVING)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def wait_until_serving(address: str, *, timeout_s: float, service: str = "") -> None:
    """Polls until SERVING; raises TimeoutError naming the address after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await is_serving(address, service=service):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{address} did not report SERVING within {timeout_s:.0f} s")
