"""MemoryService over gRPC: protobuf in, ledger and swap-manager calls inside, protobuf out.

Validation lives here only where it is about the wire (a missing message, an unset enum); the rest
is the domain objects' own checks: LedgerError becomes INVALID_ARGUMENT with the same message,
UnknownEngine FAILED_PRECONDITION (the engine must register again), and a swap call that does not
match a record's state (HostTierError) FAILED_PRECONDITION too.
"""

from __future__ import annotations

import contextlib
import logging

import grpc

from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.common.errors import AliseError, InvalidRequest
from services.memory.host_tier import HostTierError
from services.memory.ledger import (
    EngineRegistration,
    EngineUsage,
    KvBlockLayout,
    KvDtype,
    KvLedger,
    LedgerError,
    ReportOutcome,
    UnknownEngine,
    UsageReport,
)
from services.memory.pool import Tier, TierUsage
from services.memory.swap_convert import (
    codec_errors_from_pb,
    counters_to_pb,
    decision_to_pb,
    grant_to_pb,
    region_to_pb,
    victims_from_pb,
)
from services.memory.swap_manager import SwapManager

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


class SwapStateMismatch(AliseError):
    """A swap call for a record that is not in the state it needs (or an unregistered engine)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class MemoryServicer(rpc.MemoryServiceServicer):
    """Adapter between alise.v1.MemoryService and a SwapManager (which owns the KvLedger)."""

    def __init__(self, swaps: SwapManager, *, report_interval_s: float) -> None:
        self._swaps = swaps
        self._ledger: KvLedger = swaps.ledger
        self._report_interval_s = report_interval_s

    async def RegisterEngine(self, request: pb.RegisterEngineRequest, context: grpc.aio.ServicerContext):
        registration = _registration_from_pb(request)
        was_registered = self._swaps.register(registration)
        log.info(
            "%s engine %s at %s: %d device blocks of %d bytes",
            "re-registered" if was_registered else "registered",
            registration.engine_id,
            registration.address,
            registration.num_device_blocks,
            registration.layout.block_bytes,
        )
        return pb.RegisterEngineResponse(
            report_interval_s=self._report_interval_s,
            was_registered=was_registered,
            host_region=region_to_pb(self._swaps.region),
        )

    async def UnregisterEngine(self, request: pb.UnregisterEngineRequest, context: grpc.aio.ServicerContext):
        _require_engine_id(request.engine_id)
        found = self._swaps.unregister(request.engine_id)
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
        violations = self._swaps.violations()
        for violation in violations:
            log.error("ledger inconsistent: %s", violation)
        return pb.MemoryServiceGetStatsResponse(
            engines=[_engine_usage_to_pb(engine) for engine in snapshot.engines],
            host=_tier_usage_to_pb(snapshot.host),
            ledger_consistent=not violations,
            ledger_violations=violations,
            swap_counters=counters_to_pb(self._swaps.counters),
            host_region=region_to_pb(self._swaps.region),
        )

    # -- swap negotiation ---------------------------------------------------------------------

    async def PlanEviction(self, request: pb.PlanEvictionRequest, context: grpc.aio.ServicerContext):
        _require_engine_id(request.engine_id)
        victims, errors = victims_from_pb(request), codec_errors_from_pb(request)
        with _swap_errors():
            planned, dropped = self._swaps.plan(request.engine_id, victims, errors)
        for item in planned:
            log.debug(
                "plan %s/%s: %s (%s)",
                request.engine_id,
                item.decision.request_id,
                item.decision.action.value,
                item.decision.reason,
            )
        return pb.PlanEvictionResponse(
            decisions=[decision_to_pb(item) for item in planned],
            dropped_request_ids=[request_id for _, request_id in dropped],
        )

    async def CommitSwapOut(self, request: pb.CommitSwapOutRequest, context: grpc.aio.ServicerContext):
        _require_engine_id(request.engine_id)
        with _swap_errors():
            committed = self._swaps.commit(request.engine_id, list(request.request_ids))
        return pb.CommitSwapOutResponse(committed_request_ids=committed)

    async def UploadSwapped(self, request_iterator, context: grpc.aio.ServicerContext):
        key, num_bytes, expected_offset = None, 0, 0
        async for chunk in request_iterator:
            if key is None:
                _require_engine_id(chunk.engine_id)
                key = (chunk.engine_id, chunk.request_id)
            elif (chunk.engine_id, chunk.request_id) != key:
                raise InvalidRequest("every message of an upload must name the same engine_id and request_id")
            if chunk.offset_bytes != expected_offset:
                raise InvalidRequest(
                    f"chunks must arrive in order: offset {chunk.offset_bytes}, expected {expected_offset}"
                )
            with _swap_errors():
                self._swaps.write_chunk(*key, chunk.offset_bytes, chunk.data)
            expected_offset += len(chunk.data)
            num_bytes += len(chunk.data)
        if key is None:
            raise InvalidRequest("an upload needs at least one message")
        with _swap_errors():
            self._swaps.commit_upload(*key, num_bytes)
        return pb.UploadSwappedResponse(num_bytes=num_bytes)

    async def BeginRestore(self, request: pb.BeginRestoreRequest, context: grpc.aio.ServicerContext):
        _require_engine_id(request.engine_id)
        request_ids = list(request.request_ids)
        with _swap_errors():
            records = self._swaps.begin_restore(request.engine_id, request_ids)
        return pb.BeginRestoreResponse(grants=[grant_to_pb(rid, rec) for rid, rec in zip(request_ids, records)])

    async def DownloadSwapped(self, request: pb.DownloadSwappedRequest, context: grpc.aio.ServicerContext):
        _require_engine_id(request.engine_id)
        chunks = self._swaps.read_chunks(request.engine_id, request.request_id)
        while True:
            with _swap_errors():  # each chunk is read (and its record checked) only when it is sent
                item = next(chunks, None)
            if item is None:
                return
            yield pb.DownloadSwappedResponse(offset_bytes=item[0], data=item[1])

    async def ReleaseSwapped(self, request: pb.ReleaseSwappedRequest, context: grpc.aio.ServicerContext):
        _require_engine_id(request.engine_id)
        with _swap_errors():
            freed = self._swaps.release(request.engine_id, list(request.request_ids))
        return pb.ReleaseSwappedResponse(num_slots_freed=freed)


@contextlib.contextmanager
def _swap_errors():
    """Domain errors of the swap path as their gRPC statuses."""
    try:
        yield
    except (UnknownEngine, HostTierError) as error:
        raise SwapStateMismatch(str(error)) from error


def _require_engine_id(engine_id: str) -> None:
    if not engine_id:
        raise InvalidRequest("engine_id must not be empty")


def _registration_from_pb(request: pb.RegisterEngineRequest) -> EngineRegistration:
    _require_engine_id(request.engine_id)
    if not request.HasField("layout"):
        raise InvalidRequest("layout is required (the KV block layout of the engine's pool)")
    dtype = _DTYPE_FROM_PB.get(request.layout.dtype)
    if dtype is None:
        raise InvalidRequest(
            f"layout.dtype must be a KV_DTYPE_* value other than UNSPECIFIED, got {request.layout.dtype}"
        )
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
