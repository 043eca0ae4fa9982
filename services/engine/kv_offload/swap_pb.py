"""The edge where swap objects (swap_plan.py) and codecs cross the wire as alise.v1 messages.

Only this module and the clients that send the messages (memory_client.py, host_transport.py)
touch memory_service_pb2 in the engine's swap path.
"""

from __future__ import annotations

from services.common.contracts import memory_service_pb2 as pb
from services.engine.kv_offload.kv_codec import KvCodec
from services.engine.kv_offload.swap_plan import CodecQuality, RestoreGrant, SwapCandidate, SwapDecision

CODEC_TO_PB = {KvCodec.FULL: pb.KV_CODEC_FULL, KvCodec.INT8: pb.KV_CODEC_INT8, KvCodec.INT4: pb.KV_CODEC_INT4}
CODEC_FROM_PB = {value: codec for codec, value in CODEC_TO_PB.items()}


def candidate_to_pb(candidate: SwapCandidate) -> pb.EvictionCandidate:
    codecs = [
        pb.CodecCost(
            codec=CODEC_TO_PB[c.codec], size_bytes=c.size_bytes, swap_out_s=c.swap_out_s, swap_in_s=c.swap_in_s
        )
        for c in candidate.codecs
    ]
    return pb.EvictionCandidate(
        request_id=candidate.request_id,
        num_kv_tokens=candidate.num_kv_tokens,
        recompute_s=candidate.recompute_s,
        expected_wait_s=candidate.expected_wait_s,
        codecs=codecs,
    )


def quality_to_pb(quality: CodecQuality) -> pb.CodecQuality:
    return pb.CodecQuality(
        codec=CODEC_TO_PB[quality.codec],
        relative_error=quality.relative_error,
        num_blocks_measured=quality.num_blocks_measured,
    )


def decision_from_pb(decision: pb.EvictionDecision) -> SwapDecision:
    """A SWAP decision with its codec and slots; anything else (RECOMPUTE) is swap=False."""
    swap = decision.action == pb.EVICTION_ACTION_SWAP
    codec = CODEC_FROM_PB[decision.codec] if swap else None
    return SwapDecision(decision.request_id, swap, codec, tuple(decision.slot_ids))


def grant_from_pb(grant: pb.RestoreGrant) -> RestoreGrant:
    codec = CODEC_FROM_PB[grant.codec] if grant.restorable else None  # an unrestorable grant has no codec
    return RestoreGrant(grant.request_id, grant.restorable, codec, tuple(grant.slot_ids), grant.size_bytes)
