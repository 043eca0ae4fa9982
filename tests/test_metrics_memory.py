"""The memory service's /metrics over real HTTP: tiers, ledger consistency and swap counters
equal what its RPCs did."""

import grpc
import pytest

from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.common.metrics_server import MetricsPort
from services.memory import app
from services.memory.config import MemoryConfig
from tests.metrics_scrape import scrape, value

SLOT_BYTES = 64 * 1024
NUM_SLOTS = 32
BLOCK_BYTES = 16 * 2 * 2 * 2 * 64 * 2
LAYOUT = pb.KvBlockLayout(
    block_size_tokens=16, num_layers=2, num_kv_heads=2, head_dim=64, dtype=pb.KV_DTYPE_FLOAT16, block_bytes=BLOCK_BYTES
)
COSTLY_FULL = pb.CodecCost(codec=pb.KV_CODEC_FULL, size_bytes=8 * SLOT_BYTES, swap_out_s=0.02, swap_in_s=0.02)
CHEAP_INT8 = pb.CodecCost(codec=pb.KV_CODEC_INT8, size_bytes=4 * SLOT_BYTES, swap_out_s=0.004, swap_in_s=0.004)


def victim(request_id: str, size_bytes: int, recompute_s: float = 10.0, codecs=None) -> pb.EvictionCandidate:
    codecs = codecs or [pb.CodecCost(codec=pb.KV_CODEC_FULL, size_bytes=size_bytes)]
    return pb.EvictionCandidate(
        request_id=request_id, num_kv_tokens=256, recompute_s=recompute_s, expected_wait_s=1.0, codecs=codecs
    )


@pytest.mark.asyncio
async def test_tiers_and_swap_counters_equal_what_the_rpcs_did():
    handle = await app.start(
        MemoryConfig(
            port=0,
            host_tier_capacity_bytes=NUM_SLOTS * SLOT_BYTES,
            host_tier_block_bytes=SLOT_BYTES,
            metrics_port=MetricsPort(0),
        )
    )
    try:
        async with grpc.aio.insecure_channel(handle.address) as channel:
            stub = rpc.MemoryServiceStub(channel)
            await stub.RegisterEngine(
                pb.RegisterEngineRequest(
                    engine_id="e1", address="127.0.0.1:1", model_name="tiny", num_device_blocks=10, layout=LAYOUT
                )
            )
            await stub.ReportUsage(
                pb.ReportUsageRequest(
                    engine_id="e1",
                    num_device_blocks_used=4,
                    num_device_blocks_free=6,
                    num_requests=2,
                    sequence_number=1,
                )
            )
            await stub.PlanEviction(pb.PlanEvictionRequest(engine_id="e1", victims=[victim("a", 3 * SLOT_BYTES)]))
            qualities = [pb.CodecQuality(codec=pb.KV_CODEC_INT8, relative_error=0.01, num_blocks_measured=8)]
            await stub.PlanEviction(
                pb.PlanEvictionRequest(
                    engine_id="e1",
                    codec_qualities=qualities,
                    victims=[
                        victim("int8", 0, recompute_s=0.015, codecs=[COSTLY_FULL, CHEAP_INT8]),
                        victim("again", 0, recompute_s=0.001, codecs=[COSTLY_FULL, CHEAP_INT8]),
                    ],
                )
            )
            await stub.CommitSwapOut(pb.CommitSwapOutRequest(engine_id="e1", request_ids=["a"]))
            granted = await stub.BeginRestore(pb.BeginRestoreRequest(engine_id="e1", request_ids=["a", "nope"]))
            samples = await scrape(handle.metrics_port)
    finally:
        await handle.stop()
    assert [g.restorable for g in granted.grants] == [True, False]
    host, device = dict(tier="host", engine=""), dict(tier="device", engine="e1")
    assert value(samples, "alise:kv_tier_total_bytes", **host) == NUM_SLOTS * SLOT_BYTES
    assert value(samples, "alise:kv_tier_used_bytes", **host) == (3 + 4) * SLOT_BYTES  # a (full) + int8
    assert value(samples, "alise:kv_tier_free_bytes", **host) == (NUM_SLOTS - 7) * SLOT_BYTES
    assert value(samples, "alise:kv_tier_total_bytes", **device) == 10 * BLOCK_BYTES
    assert value(samples, "alise:kv_tier_used_bytes", **device) == 4 * BLOCK_BYTES
    assert value(samples, "alise:kv_tier_free_bytes", **device) == 6 * BLOCK_BYTES
    assert value(samples, "alise:memory_ledger_consistent") == 1
    assert value(samples, "alise:memory_ledger_violations") == 0
    assert value(samples, "alise:memory_registered_engines") == 1
    assert value(samples, "alise:memory_stale_engines") == 0
    assert value(samples, "alise:memory_eviction_plans_total") == 2
    assert value(samples, "alise:memory_planned_swaps_total", codec="full") == 1
    assert value(samples, "alise:memory_planned_swaps_total", codec="int8") == 1
    assert value(samples, "alise:memory_planned_swaps_total", codec="int4") == 0
    assert value(samples, "alise:memory_planned_recomputes_total") == 1
    assert value(samples, "alise:memory_restores_total", outcome="granted") == 1
    assert value(samples, "alise:memory_restores_total", outcome="refused") == 1
