"""The swap edge (swap_pb): engine swap objects <-> alise.v1 messages, so the offloader never sees protobuf."""

from __future__ import annotations

import ast
import pathlib

from services.common.contracts import memory_service_pb2 as pb
from services.engine.kv_offload.kv_codec import KvCodec
from services.engine.kv_offload.swap_pb import candidate_to_pb, decision_from_pb, grant_from_pb, quality_to_pb
from services.engine.kv_offload.swap_plan import CodecCost, CodecQuality, SwapCandidate

OFFLOADER = pathlib.Path(__file__).resolve().parents[1] / "services" / "engine" / "kv_offload" / "offloader.py"


def test_candidate_and_quality_go_out_with_every_field():
    candidate = SwapCandidate("r1", 40, 0.02, 1.5, (CodecCost(KvCodec.INT8, 1024, 0.001, 0.002),))
    message = candidate_to_pb(candidate)
    assert (message.request_id, message.num_kv_tokens, message.recompute_s, message.expected_wait_s) == (
        "r1",
        40,
        0.02,
        1.5,
    )
    (cost,) = message.codecs
    assert (cost.codec, cost.size_bytes, cost.swap_out_s, cost.swap_in_s) == (pb.KV_CODEC_INT8, 1024, 0.001, 0.002)
    quality = quality_to_pb(CodecQuality(KvCodec.INT4, 0.09, 8))
    assert (quality.codec, quality.relative_error, quality.num_blocks_measured) == (pb.KV_CODEC_INT4, 0.09, 8)


def test_decisions_and_grants_come_back_as_engine_objects():
    swap = decision_from_pb(
        pb.EvictionDecision(request_id="a", action=pb.EVICTION_ACTION_SWAP, codec=pb.KV_CODEC_FULL, slot_ids=[3, 1])
    )
    assert (swap.request_id, swap.swap, swap.codec, swap.slot_ids) == ("a", True, KvCodec.FULL, (3, 1))
    recompute = decision_from_pb(pb.EvictionDecision(request_id="b", action=pb.EVICTION_ACTION_RECOMPUTE))
    assert (recompute.swap, recompute.codec, recompute.slot_ids) == (False, None, ())
    grant = grant_from_pb(
        pb.RestoreGrant(request_id="a", restorable=True, codec=pb.KV_CODEC_INT8, slot_ids=[2], size_bytes=99)
    )
    assert (grant.restorable, grant.codec, grant.slot_ids, grant.size_bytes) == (True, KvCodec.INT8, (2,), 99)
    lost = grant_from_pb(pb.RestoreGrant(request_id="b", restorable=False))
    assert (lost.restorable, lost.codec) == (False, None)


def test_the_offloader_imports_no_protobuf():
    tree = ast.parse(OFFLOADER.read_text(encoding="utf-8"))
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m and ("contracts" in m or "_pb2" in m or m.endswith("swap_pb"))]
