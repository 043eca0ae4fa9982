"""The engine's shared-memory transport against the memory service's own region file (no gRPC).

The engine restates the region layout (it cannot import services.memory); these tests hold the two
sides to the same bytes: what one writes through its slots, the other reads back.
"""

from __future__ import annotations

import threading

import grpc
import pytest
import torch

from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.engine.kv_offload import host_transport
from services.engine.kv_offload.host_transport import (
    GrpcStreamTransport,
    SharedMemoryTransport,
    TransferFailed,
    map_region,
    open_transport,
)
from services.memory import host_region
from services.memory.host_region import HostRegion
from services.memory.swap_convert import region_to_pb

SLOT_BYTES = 64


@pytest.fixture
def region(tmp_path):
    region = HostRegion(tmp_path / "region", num_slots=16, slot_bytes=SLOT_BYTES)
    yield region
    region.close()


@pytest.fixture
def transport(region):
    opened = open_transport(region_to_pb(region), None, "e1", 1.0)
    assert isinstance(opened, SharedMemoryTransport) and opened.name == "shared-memory"
    assert not opened.commits_on_write
    yield opened
    opened.close()


def random_bytes(num_bytes: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (num_bytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_layout_constants_match_the_service():
    assert host_transport.REGION_MAGIC == host_region.MAGIC


@pytest.mark.parametrize(
    ("slot_ids", "num_bytes"),
    [
        ([3], 64),  # one full slot
        ([3], 1),  # one byte
        ([4, 5, 6, 1, 2], 300),  # two ascending runs, the last slot partly used
        ([9, 8, 7], 150),  # descending: three pieces
        ([0, 15, 1, 14], 256),  # the first and the last slot of the region
    ],
)
def test_engine_writes_what_the_service_reads_and_back(region, transport, slot_ids, num_bytes):
    data = random_bytes(num_bytes)
    transport.write("r", slot_ids, data)
    assert region.read(slot_ids, 0, num_bytes) == data.numpy().tobytes()
    back = random_bytes(num_bytes, seed=1)
    region.write(slot_ids, 0, back.numpy().tobytes())
    assert torch.equal(transport.read("r", slot_ids, num_bytes), back)


def test_consecutive_slots_are_copied_in_one_piece(transport):
    pieces = list(transport._pieces("r", [5, 6, 7, 2], 3 * SLOT_BYTES + 10))
    first_slot = host_region.HEADER_BYTES
    assert pieces == [
        (first_slot + 5 * SLOT_BYTES, 0, 3 * SLOT_BYTES),
        (first_slot + 2 * SLOT_BYTES, 3 * SLOT_BYTES, 10),
    ]


def test_read_into_a_reused_buffer(region, transport):
    data = random_bytes(100)
    transport.write("r", [2, 3], data)
    staging = torch.zeros(100, dtype=torch.uint8)
    assert transport.read("r", [2, 3], 100, out=staging) is staging and torch.equal(staging, data)
    with pytest.raises(TransferFailed, match="out holds 99 bytes"):
        transport.read("r", [2, 3], 100, out=torch.zeros(99, dtype=torch.uint8))


def test_writes_of_neighbouring_records_do_not_overlap(region, transport):
    transport.write("a", [1, 2], random_bytes(128, seed=3))
    transport.write("b", [3], random_bytes(64, seed=4))
    transport.write("c", [0], random_bytes(64, seed=5))
    assert torch.equal(transport.read("a", [1, 2], 128), random_bytes(128, seed=3))
    assert region.read([3], 0, 64) == random_bytes(64, seed=4).numpy().tobytes()


@pytest.mark.parametrize(
    ("slot_ids", "data", "message"),
    [
        ([1], torch.zeros(8, dtype=torch.float32), "uint8"),
        ([1], torch.zeros(2, 4, dtype=torch.uint8), "1-D"),
        ([1], torch.zeros(128, dtype=torch.uint8)[::2], "contiguous"),
        ([1], torch.zeros(0, dtype=torch.uint8), "0 bytes"),
        ([1], torch.zeros(65, dtype=torch.uint8), "need 2 slots"),
        ([1, 2], torch.zeros(64, dtype=torch.uint8), "need 1 slots"),
        ([16], torch.zeros(64, dtype=torch.uint8), "out of range"),
        ([3, 3], torch.zeros(100, dtype=torch.uint8), "repeated"),
    ],
)
def test_bad_writes_raise_transfer_failed(transport, slot_ids, data, message):
    with pytest.raises(TransferFailed, match=message):
        transport.write("r", slot_ids, data)


def test_closed_transport_refuses_and_unmaps(region, transport):
    transport.close()
    transport.close()  # idempotent
    with pytest.raises(TransferFailed, match="closed"):
        transport.write("r", [1], random_bytes(8))
    with pytest.raises(TransferFailed, match="closed"):
        transport.read("r", [1], 8)
    assert transport._map is None


def test_close_while_copies_run_waits_for_them(tmp_path):
    big = HostRegion(tmp_path / "big", num_slots=64, slot_bytes=64 * 1024)
    opened = open_transport(region_to_pb(big), None, "e1", 1.0)
    slot_ids, outcomes = list(range(64)), []
    have_read = [threading.Event(), threading.Event()]

    def keep_reading(read_once: threading.Event) -> None:
        while True:  # back-to-back 4 MiB reads: close() almost surely lands inside one
            try:
                opened.read("r", slot_ids, 64 * 64 * 1024)
            except Exception as error:  # TransferFailed "closed" ends it; BufferError would be a bug
                outcomes.append(error)
                return
            read_once.set()

    readers = [threading.Thread(target=keep_reading, args=(event,)) for event in have_read]
    for reader in readers:
        reader.start()
    assert all(event.wait(timeout=30) for event in have_read)
    opened.close()
    for reader in readers:
        reader.join(timeout=30)
    big.close()
    assert [type(error) for error in outcomes] == [TransferFailed, TransferFailed], outcomes
    assert opened._map is None


def test_map_region_refuses_what_is_not_the_service_region(region, tmp_path):
    good = region_to_pb(region)
    mapping = map_region(good)
    assert mapping is not None
    mapping.close()
    other_token = pb.HostRegion()
    other_token.CopyFrom(good)
    other_token.region_token = bytes(len(good.region_token))
    missing = pb.HostRegion(
        path=str(tmp_path / "absent"),
        size_bytes=good.size_bytes,
        slot_bytes=SLOT_BYTES,
        region_token=good.region_token,
        first_slot_offset_bytes=good.first_slot_offset_bytes,
    )
    too_big = pb.HostRegion()
    too_big.CopyFrom(good)
    too_big.size_bytes = good.size_bytes + SLOT_BYTES
    for refused in (other_token, missing, too_big, pb.HostRegion()):
        assert map_region(refused) is None


def test_open_transport_falls_back_to_the_stream(region):
    moved = region_to_pb(region)
    moved.region_token = b"another service!"
    with grpc.insecure_channel("127.0.0.1:1") as channel:  # never dialled: nothing is sent
        opened = open_transport(moved, rpc.MemoryServiceStub(channel), "e1", 1.0)
        assert isinstance(opened, GrpcStreamTransport) and opened.name == "grpc-stream"
        assert opened.commits_on_write
        assert isinstance(
            open_transport(pb.HostRegion(), rpc.MemoryServiceStub(channel), "e1", 1.0), GrpcStreamTransport
        )


def test_a_region_re_created_under_the_mapping_is_refused(region, transport):
    transport.write("r", [1], random_bytes(8))
    with open(region.path, "r+b") as same_file:  # a restarted service at the same path: a new token
        same_file.seek(len(host_region.MAGIC))
        same_file.write(bytes(host_region.TOKEN_BYTES))
    with pytest.raises(TransferFailed, match="re-created"):
        transport.write("r", [1], random_bytes(8))
    with pytest.raises(TransferFailed, match="re-created"):
        transport.read("r", [1], 8)
