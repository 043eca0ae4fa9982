"""Registers the engine with the memory service and reports KV usage periodically.

One call per interval, never per step (DESIGN.md section 5: a gRPC call costs ~0.7 ms). The memory
service is optional at this stage: when it is down the engine keeps serving, logs once, and keeps
retrying registration in the background.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import grpc

from services.common.contracts import memory_service_pb2, memory_service_pb2_grpc
from services.common.server import PEER_CHANNEL_OPTIONS
from services.common.tls import TlsFiles, secure_or_insecure_channel
from services.engine.engine_loop import EngineLoop

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 2.0
RETRY_INTERVAL_S = 0.5  # between registration attempts; with the channel's fast reconnect, back within ~1 s


class MemoryReporter:
    def __init__(
        self,
        address: str,
        engine_address: str,
        model_name: str,
        loop: EngineLoop,
        layout,
        on_region: Callable[[memory_service_pb2.HostRegion], None] | None = None,
        on_report: Callable[[], None] | None = None,
        tls: TlsFiles | None = None,  # mutual TLS to the memory service when it has a CA; None = plaintext
    ) -> None:
        self._address = address
        self._engine_address = engine_address
        self._model_name = model_name
        self._loop = loop
        self._layout = layout  # memory_service_pb2.KvBlockLayout
        self._on_region = on_region  # told the host tier's region at every (re-)registration
        self._on_report = on_report  # called after every accepted report (retries of failed releases)
        self._channel = secure_or_insecure_channel(address, tls, PEER_CHANNEL_OPTIONS)
        self._stub = memory_service_pb2_grpc.MemoryServiceStub(self._channel)
        self._task: asyncio.Task | None = None
        self._sequence_number = 0
        self._warned = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="memory-reporter")

    async def stop(self) -> None:
        """Stops reporting and unregisters (best effort)."""
        if self._task is not None:
            self._task.cancel()
        try:
            request = memory_service_pb2.UnregisterEngineRequest(engine_id=self._loop.engine_id)
            await self._stub.UnregisterEngine(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            pass
        await self._channel.close()

    async def _run(self) -> None:
        interval_s = await self._register_until_done()
        while True:
            await asyncio.sleep(interval_s)
            try:
                accepted = await self._report()
            except grpc.aio.AioRpcError as error:
                self._warn(error)
                continue
            if not accepted:  # the memory service restarted and forgot us
                interval_s = await self._register_until_done()
            elif self._on_report is not None:
                self._on_report()

    async def _register_until_done(self) -> float:
        snapshot = self._loop.snapshot
        request = memory_service_pb2.RegisterEngineRequest(
            engine_id=self._loop.engine_id,
            address=self._engine_address,
            model_name=self._model_name,
            num_device_blocks=snapshot.num_kv_blocks_total,
            layout=self._layout,
        )
        while True:
            try:
                reply = await self._stub.RegisterEngine(request, timeout=CALL_TIMEOUT_S, wait_for_ready=True)
            except grpc.aio.AioRpcError as error:
                self._warn(error)
                await asyncio.sleep(RETRY_INTERVAL_S)
                continue
            log.info("registered with memory service at %s", self._address)
            self._warned = False
            if self._on_region is not None:
                self._on_region(reply.host_region)
            return max(reply.report_interval_s, 0.1)

    async def _report(self) -> bool:
        snapshot = self._loop.snapshot
        self._sequence_number += 1
        reply = await self._stub.ReportUsage(
            memory_service_pb2.ReportUsageRequest(
                engine_id=self._loop.engine_id,
                num_device_blocks_used=snapshot.num_kv_blocks_used,
                num_device_blocks_free=snapshot.num_kv_blocks_free,
                num_requests=snapshot.num_requests_holding_blocks,
                sequence_number=self._sequence_number,
            ),
            timeout=CALL_TIMEOUT_S,
            wait_for_ready=True,  # a report waits (up to its timeout) for the memory service to come back
        )
        return reply.accepted

    def _warn(self, error: grpc.aio.AioRpcError) -> None:
        if not self._warned:
            log.warning("memory service %s unreachable (%s); serving without it", self._address, error.code().name)
            self._warned = True
