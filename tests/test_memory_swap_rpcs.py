"""The swap RPCs of a real memory service (127.0.0.1, port 0) with the engine's own transports.

RPC checks use a grpc.aio stub in the test's loop; the engine's transports use a synchronous stub,
as on the engine thread, so they run in a worker thread (asyncio.to_thread) while the loop serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import pathlib

import grpc
import pytest
import torch

from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.engine.kv_offload.host_transport import (
    GrpcStreamTransport,
    SharedMemoryTransport,
    TransferFailed,
    open_transport,
)
from services.memory import app
from services.memory.config import MemoryConfig

SLOT_BYTES = 64 * 1024
NUM_SLOTS = 64
LAYOUT = pb.KvBlockLayout(
    block_size_tokens=16,
    num_layers=2,
    num_kv_heads=2,
    head_dim=64,
    dtype=pb.KV_DTYPE_FLOAT16,
    block_bytes=16 * 2 * 2 * 2 * 64 * 2,
)


@pytest.fixture
async def service():
    handle = await app.start(
        MemoryConfig(port=0, host_tier_capacity_bytes=NUM_SLOTS * SLOT_BYTES, host_tier_block_bytes=SLOT_BYTES)
    )
    async with grpc.aio.insecure_channel(handle.address) as channel:
        path = pathlib.Path(
            (await rpc.MemoryServiceStub(channel).GetStats(pb.MemoryServiceGetStatsRequest())).host_region.path
        )
    assert path.exists()
    try:
        yield handle
    finally:
        await handle.stop(0)
        assert not path.exists()  # stopping the service unlinks its region file


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield rpc.MemoryServiceStub(channel)


@pytest.fixture
def sync_stub(service):
    with grpc.insecure_channel(service.address) as channel:
        yield rpc.MemoryServiceStub(channel)


async def register(stub, engine_id: str = "e1") -> pb.RegisterEngineResponse:
    return await stub.RegisterEngine(
        pb.RegisterEngineRequest(
            engine_id=engine_id, address="127.0.0.1:1", model_name="tiny", num_device_blocks=64, layout=LAYOUT
        )
    )


def candidate(
    request_id: str,
    size_bytes: int,
    *,
    wait_s: float = 1.0,
    recompute_s: float = 10.0,
    codec=pb.KV_CODEC_FULL,
    **fields,
) -> pb.EvictionCandidate:
    return pb.EvictionCandidate(
        request_id=request_id,
        num_kv_tokens=256,
        recompute_s=recompute_s,
        expected_wait_s=wait_s,
        codecs=[pb.CodecCost(codec=codec, size_bytes=size_bytes)],
        **fields,
    )


async def plan(stub, engine_id: str, *victims: pb.EvictionCandidate) -> pb.PlanEvictionResponse:
    return await stub.PlanEviction(pb.PlanEvictionRequest(engine_id=engine_id, victims=victims))


async def stats(stub) -> pb.MemoryServiceGetStatsResponse:
    return await stub.GetStats(pb.MemoryServiceGetStatsRequest())


def random_bytes(num_bytes: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (num_bytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


async def test_swap_round_trip_through_shared_memory_and_the_stream(stub, sync_stub):
    registered = await register(stub)
    shared = open_transport(registered.host_region, sync_stub, "e1", 5.0)
    streamed = GrpcStreamTransport(sync_stub, "e1", 5.0)
    assert isinstance(shared, SharedMemoryTransport)  # same host: the region file is mapped
    sizes = {"a": 3 * SLOT_BYTES + 123, "b": 2_000_000}  # b spans two 1 MiB chunks and more
    planned = await plan(stub, "e1", candidate("a", sizes["a"]), candidate("b", sizes["b"]))
    decisions = {d.request_id: d for d in planned.decisions}
    for request_id, decision in decisions.items():
        assert decision.action == pb.EVICTION_ACTION_SWAP and decision.codec == pb.KV_CODEC_FULL
        assert decision.size_bytes == sizes[request_id]
        assert len(decision.slot_ids) == math.ceil(sizes[request_id] / SLOT_BYTES)
    data = {request_id: random_bytes(size, seed=len(request_id) + size) for request_id, size in sizes.items()}
    await asyncio.to_thread(shared.write, "a", decisions["a"].slot_ids, data["a"])
    await asyncio.to_thread(streamed.write, "b", decisions["b"].slot_ids, data["b"])  # commits itself
    committed = await stub.CommitSwapOut(pb.CommitSwapOutRequest(engine_id="e1", request_ids=["a"]))
    assert list(committed.committed_request_ids) == ["a"]
    num_slots_held = sum(len(d.slot_ids) for d in decisions.values())
    assert (await stats(stub)).host.num_blocks_used == num_slots_held

    grants = (await stub.BeginRestore(pb.BeginRestoreRequest(engine_id="e1", request_ids=["a", "b"]))).grants
    assert [(g.request_id, g.restorable, g.size_bytes) for g in grants] == [
        ("a", True, sizes["a"]),
        ("b", True, sizes["b"]),
    ]
    for grant in grants:  # each path reads what the other wrote: both reach the same slots
        assert list(grant.slot_ids) == list(decisions[grant.request_id].slot_ids)
        reader = streamed if grant.request_id == "a" else shared
        back = await asyncio.to_thread(reader.read, grant.request_id, grant.slot_ids, grant.size_bytes)
        assert torch.equal(back, data[grant.request_id])
    freed = await stub.ReleaseSwapped(pb.ReleaseSwappedRequest(engine_id="e1", request_ids=["a", "b"]))
    assert freed.num_slots_freed == num_slots_held
    shared.close()

    after = await stats(stub)
    assert after.ledger_consistent and list(after.ledger_violations) == []
    assert (after.host.num_blocks_used, after.host.num_blocks_free) == (0, NUM_SLOTS)
    counters = after.swap_counters
    assert (counters.num_plans, counters.num_swapped_full, counters.num_recompute) == (1, 2, 0)
    assert (counters.num_restores_granted, counters.num_restores_refused) == (2, 0)
    assert (counters.num_streamed_bytes_in, counters.num_streamed_bytes_out) == (sizes["b"], sizes["a"])


async def test_plan_reports_recompute_and_compression(stub):
    await register(stub)
    qualities = [pb.CodecQuality(codec=pb.KV_CODEC_INT8, relative_error=0.01, num_blocks_measured=8)]
    costly_full = pb.CodecCost(codec=pb.KV_CODEC_FULL, size_bytes=8 * SLOT_BYTES, swap_out_s=0.02, swap_in_s=0.02)
    cheap_int8 = pb.CodecCost(codec=pb.KV_CODEC_INT8, size_bytes=4 * SLOT_BYTES, swap_out_s=0.004, swap_in_s=0.004)
    victims = [
        pb.EvictionCandidate(request_id="int8", num_kv_tokens=64, recompute_s=0.015, codecs=[costly_full, cheap_int8]),
        pb.EvictionCandidate(request_id="again", num_kv_tokens=64, recompute_s=0.001, codecs=[costly_full, cheap_int8]),
    ]
    reply = await stub.PlanEviction(pb.PlanEvictionRequest(engine_id="e1", victims=victims, codec_qualities=qualities))
    (int8, again) = reply.decisions
    assert (int8.action, int8.codec, len(int8.slot_ids)) == (pb.EVICTION_ACTION_SWAP, pb.KV_CODEC_INT8, 4)
    assert (again.action, list(again.slot_ids)) == (pb.EVICTION_ACTION_RECOMPUTE, []) and "recompute" in again.reason
    counters = (await stats(stub)).swap_counters
    assert (counters.num_swapped_int8, counters.num_recompute) == (1, 1)


async def test_restore_of_a_dropped_request_is_refused(stub):
    await register(stub, "e1")
    await register(stub, "e2")
    first = await plan(stub, "e1", candidate("e1-long", 40 * SLOT_BYTES, wait_s=600.0))
    assert len(first.decisions[0].slot_ids) == 40
    await stub.CommitSwapOut(pb.CommitSwapOutRequest(engine_id="e1", request_ids=["e1-long"]))
    # e2's victim is back in 1 s and needs 40 of the 24 free slots: e1's 600 s wait gives way.
    second = await plan(stub, "e2", candidate("e2-short", 40 * SLOT_BYTES, wait_s=1.0))
    assert second.decisions[0].action == pb.EVICTION_ACTION_SWAP
    assert list(second.dropped_request_ids) == ["e1-long"]
    (grant,) = (await stub.BeginRestore(pb.BeginRestoreRequest(engine_id="e1", request_ids=["e1-long"]))).grants
    assert not grant.restorable and list(grant.slot_ids) == []
    after = await stats(stub)
    assert (after.swap_counters.num_dropped, after.swap_counters.num_restores_refused) == (1, 1)
    assert after.host.num_blocks_used == 40 and after.ledger_consistent


async def test_reregistration_frees_the_engines_host_slots(stub):
    await register(stub)
    await plan(stub, "e1", candidate("a", 5 * SLOT_BYTES))
    assert (await stats(stub)).host.num_blocks_used == 5
    assert (await register(stub)).was_registered
    after = await stats(stub)
    assert after.host.num_blocks_used == 0 and after.ledger_consistent


INVALID_PLANS = {
    "empty engine_id": pb.PlanEvictionRequest(engine_id="", victims=[candidate("a", 10)]),
    "empty request_id": pb.PlanEvictionRequest(engine_id="e1", victims=[candidate("", 10)]),
    "duplicate victim ids": pb.PlanEvictionRequest(engine_id="e1", victims=[candidate("a", 10), candidate("a", 10)]),
    "unset codec": pb.PlanEvictionRequest(engine_id="e1", victims=[candidate("a", 10, codec=pb.KV_CODEC_UNSPECIFIED)]),
    "NaN recompute_s": pb.PlanEvictionRequest(engine_id="e1", victims=[candidate("a", 10, recompute_s=float("nan"))]),
    "NaN expected_wait_s": pb.PlanEvictionRequest(engine_id="e1", victims=[candidate("a", 10, wait_s=float("nan"))]),
    "negative wait": pb.PlanEvictionRequest(engine_id="e1", victims=[candidate("a", 10, wait_s=-1.0)]),
    "zero size": pb.PlanEvictionRequest(engine_id="e1", victims=[candidate("a", 0)]),
    "NaN swap time": pb.PlanEvictionRequest(
        engine_id="e1",
        victims=[
            pb.EvictionCandidate(
                request_id="a", codecs=[pb.CodecCost(codec=pb.KV_CODEC_FULL, size_bytes=10, swap_out_s=float("nan"))]
            )
        ],
    ),
    "NaN codec error": pb.PlanEvictionRequest(
        engine_id="e1",
        victims=[candidate("a", 10)],
        codec_qualities=[pb.CodecQuality(codec=pb.KV_CODEC_INT8, relative_error=float("nan"), num_blocks_measured=1)],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_PLANS))
async def test_invalid_plans_are_invalid_argument(stub, case):
    await register(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PlanEviction(INVALID_PLANS[case])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert (await stats(stub)).host.num_blocks_used == 0  # nothing reserved


def swap_calls(engine_id: str) -> dict:
    return {
        "PlanEviction": lambda s: s.PlanEviction(
            pb.PlanEvictionRequest(engine_id=engine_id, victims=[candidate("a", 10)])
        ),
        "CommitSwapOut": lambda s: s.CommitSwapOut(pb.CommitSwapOutRequest(engine_id=engine_id, request_ids=["a"])),
        "BeginRestore": lambda s: s.BeginRestore(pb.BeginRestoreRequest(engine_id=engine_id, request_ids=["a"])),
        "ReleaseSwapped": lambda s: s.ReleaseSwapped(pb.ReleaseSwappedRequest(engine_id=engine_id, request_ids=["a"])),
        "DownloadSwapped": lambda s: _drain(
            s.DownloadSwapped(pb.DownloadSwappedRequest(engine_id=engine_id, request_id="a"))
        ),
        "UploadSwapped": lambda s: s.UploadSwapped(_chunks(engine_id, "a", [(0, b"x")])),
    }


async def _drain(stream) -> list:
    return [message async for message in stream]


async def _chunks(engine_id: str, request_id: str, pieces):
    for offset, data in pieces:
        yield pb.UploadSwappedRequest(engine_id=engine_id, request_id=request_id, offset_bytes=offset, data=data)


@pytest.mark.parametrize("method", sorted(swap_calls("")))
@pytest.mark.parametrize(
    ("engine_id", "expected"), [("", grpc.StatusCode.INVALID_ARGUMENT), ("ghost", grpc.StatusCode.FAILED_PRECONDITION)]
)
async def test_empty_or_unregistered_engine(stub, method, engine_id, expected):
    await register(stub)  # e1 exists; "ghost" does not
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await swap_calls(engine_id)[method](stub)
    assert caught.value.code() == expected, caught.value.details()


@pytest.mark.parametrize("state", ["no record", "reserved", "swapped"])
async def test_download_needs_a_pinned_record(stub, state):
    await register(stub)
    if state != "no record":
        await plan(stub, "e1", candidate("a", 100))
    if state == "swapped":
        await stub.CommitSwapOut(pb.CommitSwapOutRequest(engine_id="e1", request_ids=["a"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _drain(stub.DownloadSwapped(pb.DownloadSwappedRequest(engine_id="e1", request_id="a")))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "expected restoring" in caught.value.details()


@pytest.mark.parametrize(
    ("case", "pieces", "expected"),
    [
        ("out of order", [(0, b"x" * 10), (20, b"y" * 10)], grpc.StatusCode.INVALID_ARGUMENT),
        ("not starting at 0", [(5, b"x")], grpc.StatusCode.INVALID_ARGUMENT),
        ("over the reserved size", [(0, b"x" * 60), (60, b"y" * 41)], grpc.StatusCode.FAILED_PRECONDITION),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_bad_uploads_leave_the_record_uncommitted(stub, case, pieces, expected):
    await register(stub)
    await plan(stub, "e1", candidate("a", 100))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadSwapped(_chunks("e1", "a", pieces))
    assert caught.value.code() == expected, caught.value.details()
    (grant,) = (await stub.BeginRestore(pb.BeginRestoreRequest(engine_id="e1", request_ids=["a"]))).grants
    assert not grant.restorable  # never committed


async def test_upload_mixing_requests_or_without_reservation(stub):
    await register(stub)
    await plan(stub, "e1", candidate("a", 100))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadSwapped(_mixed())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UploadSwapped(_chunks("e1", "unplanned", [(0, b"x")]))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def _mixed():
    yield pb.UploadSwappedRequest(engine_id="e1", request_id="a", offset_bytes=0, data=b"x")
    yield pb.UploadSwappedRequest(engine_id="e1", request_id="b", offset_bytes=1, data=b"y")


async def test_transport_errors_are_transfer_failed(stub, sync_stub):
    registered = await register(stub)
    streamed, shared = (
        GrpcStreamTransport(sync_stub, "e1", 5.0),
        open_transport(registered.host_region, sync_stub, "e1", 5.0),
    )
    with pytest.raises(TransferFailed, match="UploadSwapped failed: FAILED_PRECONDITION"):
        await asyncio.to_thread(streamed.write, "unplanned", [], random_bytes(10, 0))
    (decision,) = (await plan(stub, "e1", candidate("a", 100))).decisions
    with pytest.raises(TransferFailed, match="DownloadSwapped failed: FAILED_PRECONDITION"):
        await asyncio.to_thread(streamed.read, "a", decision.slot_ids, 100)  # reserved, not pinned
    with pytest.raises(TransferFailed, match="need 2 slots"):
        await asyncio.to_thread(shared.write, "a", decision.slot_ids, random_bytes(SLOT_BYTES + 1, 0))
    await asyncio.to_thread(shared.write, "a", decision.slot_ids, random_bytes(100, 0))
    await stub.CommitSwapOut(pb.CommitSwapOutRequest(engine_id="e1", request_ids=["a"]))
    await stub.BeginRestore(pb.BeginRestoreRequest(engine_id="e1", request_ids=["a"]))
    with pytest.raises(TransferFailed, match="received 100 of 101 bytes"):
        await asyncio.to_thread(streamed.read, "a", decision.slot_ids, 101)  # size mismatch
    shared.close()


async def test_a_short_upload_is_not_committed(stub):
    await register(stub)
    await plan(stub, "e1", candidate("a", 100))
    with contextlib.suppress(grpc.aio.AioRpcError):  # refusing the stream is fine, committing is not
        await stub.UploadSwapped(_chunks("e1", "a", [(0, b"x" * 60)]))  # 60 of 100 bytes
    (grant,) = (await stub.BeginRestore(pb.BeginRestoreRequest(engine_id="e1", request_ids=["a"]))).grants
    assert not grant.restorable  # 40 bytes of garbage must not be restored as KV


async def test_replanning_a_swapped_request_on_a_full_tier(stub):
    await register(stub)
    await plan(stub, "e1", candidate("a", 32 * SLOT_BYTES, wait_s=600.0))
    await stub.CommitSwapOut(pb.CommitSwapOutRequest(engine_id="e1", request_ids=["a"]))
    await plan(stub, "e1", candidate("b", 32 * SLOT_BYTES))  # the tier is now full (64 slots)
    # "a" again, now bigger: its own 32 slots free up, but they are counted a second time as
    # droppable, so the plan promises 48 slots of which only 32 exist and the reservation fails.
    reply = await plan(stub, "e1", candidate("a", 48 * SLOT_BYTES, wait_s=1.0))
    assert reply.decisions[0].action == pb.EVICTION_ACTION_RECOMPUTE
    assert list(reply.dropped_request_ids) == [] and (await stats(stub)).ledger_consistent
