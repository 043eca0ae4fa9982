"""Protobuf <-> domain conversions of the swap negotiation (the servicer stays a thin adapter)."""

from __future__ import annotations

from services.common.contracts import memory_service_pb2 as pb
from services.common.errors import InvalidRequest
from services.memory.eviction_policy import Action, CodecCost, KvCodec, Victim
from services.memory.host_region import HostRegion
from services.memory.host_tier import SwapRecord
from services.memory.swap_manager import PlannedVictim, SwapCounters

CODEC_FROM_PB = {pb.KV_CODEC_FULL: KvCodec.FULL, pb.KV_CODEC_INT8: KvCodec.INT8, pb.KV_CODEC_INT4: KvCodec.INT4}
CODEC_TO_PB = {codec: value for value, codec in CODEC_FROM_PB.items()}
_ACTION_TO_PB = {Action.SWAP: pb.EVICTION_ACTION_SWAP, Action.RECOMPUTE: pb.EVICTION_ACTION_RECOMPUTE}


def victims_from_pb(request: pb.PlanEvictionRequest) -> list[Victim]:
    """Validated victims; InvalidRequest names the first bad field."""
    victims, seen = [], set()
    for index, candidate in enumerate(request.victims):
        where = f"victims[{index}]"
        if not candidate.request_id:
            raise InvalidRequest(f"{where}.request_id must not be empty")
        if candidate.request_id in seen:
            raise InvalidRequest(f"{where}.request_id {candidate.request_id!r} appears twice")
        seen.add(candidate.request_id)
        for name in ("recompute_s", "expected_wait_s"):
            if not getattr(candidate, name) >= 0:  # also rejects NaN
                raise InvalidRequest(f"{where}.{name} must be >= 0, got {getattr(candidate, name)}")
        victims.append(
            Victim(
                request_id=candidate.request_id,
                num_kv_tokens=candidate.num_kv_tokens,
                recompute_s=candidate.recompute_s,
                expected_wait_s=candidate.expected_wait_s,
                codecs=tuple(_codec_cost(cost, f"{where}.codecs") for cost in candidate.codecs),
            )
        )
    return victims


def _codec_cost(cost: pb.CodecCost, where: str) -> CodecCost:
    codec = CODEC_FROM_PB.get(cost.codec)
    if codec is None:
        raise InvalidRequest(f"{where}: codec must be a KV_CODEC_* value other than UNSPECIFIED, got {cost.codec}")
    if not (cost.swap_out_s >= 0 and cost.swap_in_s >= 0):
        raise InvalidRequest(f"{where}: swap times must be >= 0")
    if cost.size_bytes == 0:
        raise InvalidRequest(f"{where}: size_bytes of {codec.value} must be > 0")
    return CodecCost(codec, cost.size_bytes, cost.swap_out_s, cost.swap_in_s)


def codec_errors_from_pb(request: pb.PlanEvictionRequest) -> dict[KvCodec, float]:
    """Measured errors of lossy codecs; unmeasured ones (no blocks) are left out (not allowed)."""
    errors = {}
    for quality in request.codec_qualities:
        codec = CODEC_FROM_PB.get(quality.codec)
        if codec is None:
            raise InvalidRequest(f"codec_qualities: codec must be a KV_CODEC_* value, got {quality.codec}")
        if not quality.relative_error >= 0:
            raise InvalidRequest(f"codec_qualities: relative_error must be >= 0, got {quality.relative_error}")
        if quality.num_blocks_measured > 0:
            errors[codec] = quality.relative_error
    return errors


def decision_to_pb(planned: PlannedVictim) -> pb.EvictionDecision:
    decision = planned.decision
    return pb.EvictionDecision(
        request_id=decision.request_id,
        action=_ACTION_TO_PB[decision.action],
        codec=CODEC_TO_PB[decision.codec] if decision.codec else pb.KV_CODEC_UNSPECIFIED,
        slot_ids=list(planned.slot_ids),
        size_bytes=decision.size_bytes,
        reason=decision.reason,
    )


def grant_to_pb(request_id: str, record: SwapRecord | None) -> pb.RestoreGrant:
    if record is None:
        return pb.RestoreGrant(request_id=request_id, restorable=False)
    return pb.RestoreGrant(
        request_id=request_id,
        restorable=True,
        codec=CODEC_TO_PB[record.codec],
        slot_ids=record.slot_ids,
        size_bytes=record.size_bytes,
    )


def region_to_pb(region: HostRegion | None) -> pb.HostRegion:
    if region is None:
        return pb.HostRegion()
    return pb.HostRegion(
        path=str(region.path),
        size_bytes=region.size_bytes,
        slot_bytes=region.slot_bytes,
        region_token=region.token,
        first_slot_offset_bytes=region.first_slot_offset_bytes,
    )


def counters_to_pb(counters: SwapCounters) -> pb.SwapCounters:
    swapped = counters.num_swapped_by_codec
    return pb.SwapCounters(
        num_swapped_full=swapped[KvCodec.FULL],
        num_swapped_int8=swapped[KvCodec.INT8],
        num_swapped_int4=swapped[KvCodec.INT4],
        num_recompute=counters.num_recompute,
        num_dropped=counters.num_dropped,
        num_restores_granted=counters.num_restores_granted,
        num_restores_refused=counters.num_restores_refused,
        num_streamed_bytes_in=counters.num_streamed_bytes_in,
        num_streamed_bytes_out=counters.num_streamed_bytes_out,
        num_plans=counters.num_plans,
    )
