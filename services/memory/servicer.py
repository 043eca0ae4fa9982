"""MemoryService over gRPC: protobuf in, ledger calls inside, protobuf out.

Validation lives here only where it is about the wire (a missing message, an unset enum); the rest
is the domain objects' own checks, whose LedgerError becomes INVALID_ARGUMENT with the same message.
"""

from __future__ import annotations

import logging

import grpc

from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.common.errors import InvalidRequest
from services.memory.ledger import (
    EngineRegistration,
    EngineUsage,
    KvBlockLayout,
    KvDtype,
    KvLedger,
    LedgerError,
    ReportOutcome,
    UsageReport,
)
from services.memory.pool import Tier, TierUsage

log = logging.getLogger(__name__)

_DTYPE_FROM_PB = {
    pb.KV_DTYPE_FLOAT32: KvDtype.FLOAT32,
    pb.KV_DTYPE_FLOAT16: KvDtype.FLOAT16,
    pb.KV_DTYPE_BFLOAT16: KvDtype.BFLOAT16,
    pb.KV_DTYPE_INT8: KvDtype.INT8,
    pb.KV_DTYPE_INT4: KvDtype.INT4,
}
_DTYPE_TO_PB = {dtype: value for value, dtype in _DTYPE_FROM_PB.items()}
_TIER_TO_PB = {Tier.DEVICE: pb.MEMORY_TIER_DEVICE, Tier.HOST: pb.MEMORY_TIER_HOST}


class MemoryServicer(rpc.MemoryServiceServicer):
    """Adapter between alise.v1.MemoryService and a KvLedger."""

    def __init__(self, ledger: KvLedger, *, report_interval_s: float) -> None:
        self._ledger = ledger
        self._report_interval_s = report_interval_s

    async def RegisterEngine(self, request: pb.RegisterEngineRequest, context: grpc.aio.ServicerContext):
        registration = _registration_from_pb(request)
        was_registered = self._ledger.register(registration)
        log.info("%s engine %s at %s: %d device blocks of %d bytes",
                 "re-registered" if was_registered else "registered", registration.engine_id,
                 registration.address, registration.num_device_blocks, registration.layout.block_bytes)
        return pb.RegisterEngineResponse(
            report_interval_s=self._report_interval_s, was_registered=was_registered
        )

    async def UnregisterEngine(self, request: pb.UnregisterEngineRequest, context: grpc.aio.ServicerContext):
        _require_engine_id(request.engine_id)
        found = self._ledger.unregister(request.engine_id)
        log.info("unregister engine %s: %s", request.engine_id, "done" if found else "was not registered")
        return pb.UnregisterEngineResponse(found=found)

    async def ReportUsage(self, request: pb.ReportUsageRequest, context: grpc.aio.ServicerContext):
        _require_engine_id(request.engine_id)
        try:
            report = UsageReport(
                engine_id=request.engine_id,
                num_device_blocks_used=request.num_device_blocks_used,
                num_device_blocks_free=request.num_device_blocks_free,
                num_requests=request.num_requests,
                sequence_number=request.sequence_number,
            )
            outcome = self._ledger.report(report)
        except LedgerError as error:
            raise InvalidRequest(str(error)) from error
        if outcome is ReportOutcome.STALE:
            log.debug("ignored stale report %d of engine %s", request.sequence_number, request.engine_id)
        # A stale report still comes from a known engine: accepted=False would make it re-register.
        return pb.ReportUsageResponse(accepted=outcome is not ReportOutcome.UNKNOWN_ENGINE)

    async def GetStats(self, request: pb.MemoryServiceGetStatsRequest, context: grpc.aio.ServicerContext):
        snapshot = self._ledger.snapshot()
        for violation in snapshot.violations:
            log.error("ledger inconsistent: %s", violation)
        return pb.MemoryServiceGetStatsResponse(
            engines=[_engine_usage_to_pb(engine) for engine in snapshot.engines],
            host=_tier_usage_to_pb(snapshot.host),
            ledger_consistent=snapshot.is_consistent,
        )


def _require_engine_id(engine_id: str) -> None:
    if not engine_id:
        raise InvalidRequest("engine_id must not be empty")


def _registration_from_pb(request: pb.RegisterEngineRequest) -> EngineRegistration:
    _require_engine_id(request.engine_id)
    if not request.HasField("layout"):
        raise InvalidRequest("layout is required (the KV block layout of the engine's pool)")
    dtype = _DTYPE_FROM_PB.get(request.layout.dtype)
    if dtype is None:
        raise InvalidRequest(f"layout.dtype must be a KV_DTYPE_* value other than UNSPECIFIED, "
                             f"got {request.layout.dtype}")
    try:
        layout = KvBlockLayout(
            block_size_tokens=request.layout.block_size_tokens,
            num_layers=request.layout.num_layers,
            num_kv_heads=request.layout.num_kv_heads,
            head_dim=request.layout.head_dim,
            dtype=dtype,
            block_bytes=request.layout.block_bytes,
        )
        return EngineRegistration(
            engine_id=request.engine_id,
            address=request.address,
            model_name=request.model_name,
            num_device_blocks=request.num_device_blocks,
            layout=layout,
        )
    except LedgerError as error:
        raise InvalidRequest(str(error)) from error


def _tier_usage_to_pb(usage: TierUsage) -> pb.TierUsage:
    return pb.TierUsage(
        tier=_TIER_TO_PB[usage.tier],
        num_blocks_total=usage.num_blocks_total,
        num_blocks_used=usage.num_blocks_used,
        num_blocks_free=usage.num_blocks_free,
        used_bytes=usage.used_bytes,
    )


def _engine_usage_to_pb(engine: EngineUsage) -> pb.EngineUsage:
    registration, layout = engine.registration, engine.registration.layout
    return pb.EngineUsage(
        engine_id=registration.engine_id,
        address=registration.address,
        model_name=registration.model_name,
        layout=pb.KvBlockLayout(
            block_size_tokens=layout.block_size_tokens,
            num_layers=layout.num_layers,
            num_kv_heads=layout.num_kv_heads,
            head_dim=layout.head_dim,
            dtype=_DTYPE_TO_PB[layout.dtype],
            block_bytes=layout.block_bytes,
        ),
        device=_tier_usage_to_pb(engine.device),
        num_requests=engine.num_requests,
        report_age_s=engine.report_age_s,
    )
