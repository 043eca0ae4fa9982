"""The issue's ledger invariant: after 10,000 random admit / grow / preempt / swap / resume / abort /
finish events of two engines sharing the host tier (aborts in every phase, mid-swap included),
used + free == total in every tier, no block or slot in two places, a request's KV in at most one
tier outside a transfer, and nothing leaks. The driver is tests/memory_swap_events.py.

Two backends: the SwapManager in-process (fast: the 10,000 events) and the real service over
gRPC with the engine's transports (a few hundred events; checks GetStats.ledger_consistent).
"""

from __future__ import annotations

import asyncio
import pathlib

import grpc
import torch

from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.engine.kv_offload.host_transport import GrpcStreamTransport, SharedMemoryTransport, open_transport
from services.memory import app
from services.memory.config import MemoryConfig
from services.memory.eviction_policy import Action, KvCodec, PlanSettings, Victim
from services.memory.host_region import HostRegion
from services.memory.host_tier import RecordState
from services.memory.ledger import EngineRegistration, KvBlockLayout, KvDtype, KvLedger, ReportOutcome, UsageReport
from services.memory.swap_manager import SwapManager
from tests.memory_swap_events import BYTES_PER_BLOCK, EventDriver, Key, Phase

ENGINES = ("e1", "e2")
NUM_DEVICE_BLOCKS = 48
SLOT_BYTES = 64
NUM_HOST_SLOTS = 40  # ~3 swapped requests of 10 blocks at full precision: drops happen
LAYOUT = KvBlockLayout(
    block_size_tokens=4,
    num_layers=1,
    num_kv_heads=1,
    head_dim=12,
    dtype=KvDtype.FLOAT32,
    block_bytes=BYTES_PER_BLOCK[KvCodec.FULL],
)
STATE_OF_PHASE = {
    Phase.SWAPPING_OUT: RecordState.RESERVED,
    Phase.SWAPPED: RecordState.SWAPPED,
    Phase.RESTORING: RecordState.RESTORING,
}
MUST_HAPPEN = (
    "plan swap",
    "plan recompute",
    "dropped",
    "restore granted",
    "restore refused",
    "restore done",
    "abort swapping out",
    "abort swapped",
    "abort restoring",
    "late commit refused",
    "grow short",
    "finish",
)


class DirectBackend:
    """The SwapManager and its region in-process, on a virtual clock."""

    def __init__(self, tmp_path: pathlib.Path) -> None:
        self.now_s = 0.0
        self.ledger = KvLedger(
            host_tier_capacity_bytes=NUM_HOST_SLOTS * SLOT_BYTES,
            host_tier_block_bytes=SLOT_BYTES,
            stale_after_s=1e9,
            clock=lambda: self.now_s,
        )
        self.region = HostRegion(tmp_path / "region", NUM_HOST_SLOTS, SLOT_BYTES)
        settings = PlanSettings(slot_bytes=SLOT_BYTES, max_relative_error=0.02, assumed_bytes_per_s=1e5)
        self.swaps = SwapManager(self.ledger, self.region, settings, clock=lambda: self.now_s)

    def register(self, engine_id: str, num_device_blocks: int) -> None:
        self.swaps.register(EngineRegistration(engine_id, "127.0.0.1:1", "tiny", num_device_blocks, LAYOUT))

    def plan(self, engine_id, victims, errors):
        self.now_s += 0.002
        planned, dropped = self.swaps.plan(engine_id, victims, errors)
        swaps = {
            p.decision.request_id: (list(p.slot_ids), p.decision.size_bytes)
            for p in planned
            if p.decision.action is Action.SWAP
        }
        return swaps, dropped

    def write_and_commit(self, engine_id, request_id, slot_ids, payload) -> bool:
        self.region.write(slot_ids, 0, payload)
        return self.swaps.commit(engine_id, [request_id]) == [request_id]

    def commit(self, engine_id, request_ids):
        return self.swaps.commit(engine_id, request_ids)

    def begin_restore(self, engine_id, request_id):
        (record,) = self.swaps.begin_restore(engine_id, [request_id])
        return None if record is None else (list(record.slot_ids), record.size_bytes)

    def read(self, engine_id, request_id, slot_ids, size_bytes) -> bytes:
        return self.region.read(slot_ids, 0, size_bytes)

    def release(self, engine_id, request_ids) -> None:
        self.swaps.release(engine_id, request_ids)

    def report(self, engine_id, used, free, num_requests, sequence_number) -> None:
        outcome = self.ledger.report(UsageReport(engine_id, used, free, num_requests, sequence_number))
        assert outcome is ReportOutcome.ACCEPTED

    def violations(self, expected: dict[Key, tuple[Phase, int]]) -> list[str]:
        found = list(self.swaps.violations())
        records = {record.key: record for record in self.swaps.tier.records()}
        if records.keys() != expected.keys():
            found.append(f"host records {sorted(records)} != expected {sorted(expected)}")
        for key, (phase, num_slots) in expected.items():
            record = records.get(key)
            if record and (record.state is not STATE_OF_PHASE[phase] or len(record.slot_ids) != num_slots):
                found.append(
                    f"{key}: record {record.state.value} of {len(record.slot_ids)} slots, engine in {phase.value}"
                )
        # (swaps.violations covers used + free == total of every pool and each engine's report.)
        host = self.ledger.host_usage()
        held = sum(len(record.slot_ids) for record in records.values())
        if not host.num_blocks_used == held == sum(n for _, n in expected.values()):
            found.append(f"ledger host usage {host.num_blocks_used} != records' slots {held}")
        if host.num_blocks_used + host.num_blocks_free != host.num_blocks_total:
            found.append("host tier: used + free != total")
        return found


def test_ten_thousand_random_events_keep_the_ledger_consistent(tmp_path):
    backend = DirectBackend(tmp_path)
    driver = EventDriver(backend, seed=5, engine_ids=ENGINES, num_device_blocks=NUM_DEVICE_BLOCKS)
    driver.run(10_000)  # checks every invariant after every event
    missing = [path for path in MUST_HAPPEN if driver.counts[path] == 0]
    assert missing == [], dict(driver.counts)
    assert all(backend.swaps.counters.num_swapped_by_codec[codec] > 0 for codec in KvCodec)

    driver.abort_everything()
    for engine in driver.engines.values():
        assert engine.kv.pool.num_free_blocks == NUM_DEVICE_BLOCKS and engine.kv.num_requests_holding_blocks == 0
    for usage in backend.ledger.snapshot().engines:  # the ledger saw the engines' last reports
        assert (usage.device.num_blocks_used, usage.device.num_blocks_free) == (0, NUM_DEVICE_BLOCKS)
    assert backend.swaps.tier.num_free_slots == NUM_HOST_SLOTS and backend.swaps.tier.records() == []
    assert backend.ledger.host_usage().num_blocks_used == 0 and backend.swaps.violations() == []
    backend.region.close()


# -- the same over gRPC ----------------------------------------------------------------------------

CODEC_TO_PB = {KvCodec.FULL: pb.KV_CODEC_FULL, KvCodec.INT8: pb.KV_CODEC_INT8, KvCodec.INT4: pb.KV_CODEC_INT4}
PB_LAYOUT = pb.KvBlockLayout(
    block_size_tokens=4,
    num_layers=1,
    num_kv_heads=1,
    head_dim=12,
    dtype=pb.KV_DTYPE_FLOAT32,
    block_bytes=LAYOUT.block_bytes,
)


class GrpcBackend:
    """The real service through a synchronous stub, bytes through both engine transports."""

    def __init__(self, stub: rpc.MemoryServiceStub, driver_rng) -> None:
        self.stub = stub
        self.rng = driver_rng  # which transport moves each swap
        self.transports: dict[str, tuple[SharedMemoryTransport, GrpcStreamTransport]] = {}
        self.device_used: dict[str, int] = {}

    def register(self, engine_id: str, num_device_blocks: int) -> None:
        reply = self.stub.RegisterEngine(
            pb.RegisterEngineRequest(
                engine_id=engine_id,
                address="127.0.0.1:1",
                model_name="tiny",
                num_device_blocks=num_device_blocks,
                layout=PB_LAYOUT,
            )
        )
        shared = open_transport(reply.host_region, self.stub, engine_id, 5.0)
        assert isinstance(shared, SharedMemoryTransport)
        self.transports[engine_id] = (shared, GrpcStreamTransport(self.stub, engine_id, 5.0))
        self.device_used[engine_id] = 0  # the ledger's view before the first report

    def plan(self, engine_id: str, victims: list[Victim], errors):
        reply = self.stub.PlanEviction(
            pb.PlanEvictionRequest(
                engine_id=engine_id,
                victims=[_victim_to_pb(victim) for victim in victims],
                codec_qualities=[
                    pb.CodecQuality(codec=CODEC_TO_PB[c], relative_error=e, num_blocks_measured=4)
                    for c, e in errors.items()
                ],
            )
        )
        swaps = {
            d.request_id: (list(d.slot_ids), d.size_bytes)
            for d in reply.decisions
            if d.action == pb.EVICTION_ACTION_SWAP
        }
        return swaps, [(request_id.split("/")[0], request_id) for request_id in reply.dropped_request_ids]

    def write_and_commit(self, engine_id, request_id, slot_ids, payload) -> bool:
        shared, streamed = self.transports[engine_id]
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        if self.rng.random() < 0.5:
            streamed.write(request_id, slot_ids, data)  # commits when the stream ends
            return True
        shared.write(request_id, slot_ids, data)
        return self.commit(engine_id, [request_id]) == [request_id]

    def commit(self, engine_id, request_ids):
        reply = self.stub.CommitSwapOut(pb.CommitSwapOutRequest(engine_id=engine_id, request_ids=request_ids))
        return list(reply.committed_request_ids)

    def begin_restore(self, engine_id, request_id):
        (grant,) = self.stub.BeginRestore(pb.BeginRestoreRequest(engine_id=engine_id, request_ids=[request_id])).grants
        return (list(grant.slot_ids), grant.size_bytes) if grant.restorable else None

    def read(self, engine_id, request_id, slot_ids, size_bytes) -> bytes:
        transport = self.rng.choice(self.transports[engine_id])
        return transport.read(request_id, slot_ids, size_bytes).numpy().tobytes()

    def release(self, engine_id, request_ids) -> None:
        self.stub.ReleaseSwapped(pb.ReleaseSwappedRequest(engine_id=engine_id, request_ids=request_ids))

    def report(self, engine_id, used, free, num_requests, sequence_number) -> None:
        assert self.stub.ReportUsage(
            pb.ReportUsageRequest(
                engine_id=engine_id,
                num_device_blocks_used=used,
                num_device_blocks_free=free,
                num_requests=num_requests,
                sequence_number=sequence_number,
            )
        ).accepted
        self.device_used[engine_id] = used

    def violations(self, expected: dict[Key, tuple[Phase, int]]) -> list[str]:
        stats = self.stub.GetStats(pb.MemoryServiceGetStatsRequest())
        found = list(stats.ledger_violations)
        if stats.ledger_consistent == bool(found):
            found.append(f"ledger_consistent {stats.ledger_consistent} with {len(found)} violations")
        if stats.host.num_blocks_used != sum(n for _, n in expected.values()):
            found.append(f"host tier holds {stats.host.num_blocks_used} slots, expected {expected}")
        for tier in [stats.host] + [engine.device for engine in stats.engines]:
            if tier.num_blocks_used + tier.num_blocks_free != tier.num_blocks_total:
                found.append(f"tier {tier.tier}: used + free != total")
        if {e.engine_id: e.device.num_blocks_used for e in stats.engines} != self.device_used:
            found.append("device usage in the ledger differs from the engines' reports")
        return found


def _victim_to_pb(victim: Victim) -> pb.EvictionCandidate:
    return pb.EvictionCandidate(
        request_id=victim.request_id,
        num_kv_tokens=victim.num_kv_tokens,
        recompute_s=victim.recompute_s,
        expected_wait_s=victim.expected_wait_s,
        codecs=[
            pb.CodecCost(
                codec=CODEC_TO_PB[c.codec], size_bytes=c.size_bytes, swap_out_s=c.swap_out_s, swap_in_s=c.swap_in_s
            )
            for c in victim.codecs
        ],
    )


def _run_over_grpc(address: str, num_events: int) -> EventDriver:
    with grpc.insecure_channel(address) as channel:
        stub = rpc.MemoryServiceStub(channel)
        backend = GrpcBackend(stub, None)
        driver = EventDriver(backend, seed=11, engine_ids=ENGINES, num_device_blocks=NUM_DEVICE_BLOCKS)
        backend.rng = driver.rng
        driver.run(num_events)
        driver.abort_everything()
        final = stub.GetStats(pb.MemoryServiceGetStatsRequest())
        for shared, _ in backend.transports.values():
            shared.close()
    assert final.ledger_consistent and final.host.num_blocks_used == 0
    assert all(engine.device.num_blocks_used == 0 for engine in final.engines)
    assert final.swap_counters.num_streamed_bytes_in > 0 and final.swap_counters.num_streamed_bytes_out > 0
    return driver


async def test_random_events_over_grpc_keep_the_exported_ledger_consistent():
    handle = await app.start(
        MemoryConfig(port=0, host_tier_capacity_bytes=NUM_HOST_SLOTS * SLOT_BYTES, host_tier_block_bytes=SLOT_BYTES)
    )
    try:
        driver = await asyncio.to_thread(_run_over_grpc, handle.address, 250)
    finally:
        await handle.stop(0)
    for path in ("plan swap", "dropped", "restore done", "swap out"):
        assert driver.counts[path] > 0, dict(driver.counts)
