"""HostTier (slots and swap records with their states) and HostRegion (the shared-memory file)."""

from __future__ import annotations

import pytest

from services.memory.eviction_policy import KvCodec
from services.memory.host_region import HEADER_BYTES, MAGIC, TOKEN_BYTES, HostRegion
from services.memory.host_tier import HostTier, HostTierError, RecordState

E1_A, E1_B, E2_A = ("e1", "a"), ("e1", "b"), ("e2", "a")


def reserve(tier: HostTier, key, num_slots: int, resume_at_s: float = 10.0):
    return tier.reserve(key, num_slots, size_bytes=num_slots * 100, codec=KvCodec.FULL, resume_at_s=resume_at_s)


def test_life_cycle_reserve_commit_pin_release():
    tier = HostTier(8)
    record = reserve(tier, E1_A, 3)
    assert record.state is RecordState.RESERVED and len(set(record.slot_ids)) == 3
    assert (tier.num_used_slots, tier.num_free_slots) == (3, 5)
    assert tier.pin(E1_A) is None  # bytes not written yet: not restorable
    assert tier.droppable() == []  # bytes in flight: never dropped
    assert tier.commit(E1_A) and record.state is RecordState.SWAPPED
    assert not tier.commit(E1_A)  # only a RESERVED record commits
    assert tier.droppable() == [record]
    assert tier.pin(E1_A) is record and record.state is RecordState.RESTORING
    assert tier.pin(E1_A) is record  # pinning again is idempotent
    assert tier.droppable() == []
    assert tier.release(E1_A) == 3
    assert tier.get(E1_A) is None and tier.num_free_slots == 8 and tier.violations() == []


@pytest.mark.parametrize("state", [RecordState.RESERVED, RecordState.SWAPPED, RecordState.RESTORING])
def test_release_in_any_state_frees_the_slots(state):
    tier = HostTier(6)
    other = reserve(tier, E2_A, 2)
    reserve(tier, E1_A, 4)
    if state is not RecordState.RESERVED:
        tier.commit(E1_A)
    if state is RecordState.RESTORING:
        tier.pin(E1_A)
    assert tier.get(E1_A).state is state
    assert tier.release(E1_A) == 4
    assert tier.release(E1_A) == 0  # a second release (abort after restore) is harmless
    assert tier.num_free_slots == 4 and tier.get(E2_A) is other and tier.violations() == []
    assert not tier.commit(E1_A) and tier.pin(E1_A) is None  # a late commit or restore finds nothing


def test_unknown_keys():
    tier = HostTier(2)
    assert not tier.commit(E1_A) and tier.pin(E1_A) is None and tier.release(E1_A) == 0


def test_reserve_beyond_free_slots_changes_nothing():
    tier = HostTier(4)
    reserve(tier, E1_A, 3)
    with pytest.raises(HostTierError, match="needs 2 slots, 1 free"):
        reserve(tier, E1_B, 2)
    assert tier.get(E1_B) is None and tier.num_free_slots == 1 and tier.violations() == []


def test_reserving_a_key_again_replaces_its_record():
    tier = HostTier(4)
    reserve(tier, E1_A, 3)
    tier.commit(E1_A)
    record = reserve(tier, E1_A, 4)  # the old 3 slots are freed first, so 4 fit
    assert record.state is RecordState.RESERVED and tier.num_free_slots == 0
    assert len(tier.records()) == 1 and tier.violations() == []


def test_release_engine_frees_only_that_engine():
    tier = HostTier(10)
    reserve(tier, E1_A, 2)
    reserve(tier, E1_B, 3)
    reserve(tier, E2_A, 4)
    assert tier.release_engine("e1") == 5
    assert [record.key for record in tier.records()] == [E2_A]
    assert tier.held_by_engine() == {E2_A: 4} and tier.violations() == []


def test_reused_slots_are_never_handed_out_twice():
    tier = HostTier(5)
    for round_number in range(20):
        keys = [("e1", f"r{round_number}-{i}") for i in range(3)]
        for key, num_slots in zip(keys, (1, 2, 2)):
            reserve(tier, key, num_slots)
        held = [slot for record in tier.records() for slot in record.slot_ids]
        assert sorted(held) == list(range(5))
        tier.release(keys[round_number % 3])
        for key in keys:
            tier.release(key)
    assert tier.num_free_slots == 5 and tier.violations() == []


def test_violations_detect_a_slot_in_two_records():
    tier = HostTier(6)
    first, second = reserve(tier, E1_A, 2), reserve(tier, E2_A, 2)
    second.slot_ids[0] = first.slot_ids[1]  # corrupt: one slot held twice, another lost
    found = tier.violations()
    assert any(f"host slot {first.slot_ids[1]} held by both" in line for line in found), found
    assert any("free +" in line and "!= 6 slots" in line for line in found), found


def test_violations_detect_a_slot_both_free_and_held():
    tier = HostTier(4)
    record = reserve(tier, E1_A, 2)
    tier._free_slot_ids.append(record.slot_ids[0])  # corrupt the free list
    found = tier.violations()
    assert any("both free and held" in line for line in found), found
    assert any("free list twice" in line or "!= 4 slots" in line for line in found), found


def test_violations_detect_an_out_of_range_slot():
    tier = HostTier(4)
    record = reserve(tier, E1_A, 1)
    record.slot_ids.append(7)
    assert any("out of range" in line for line in tier.violations())


def test_negative_size_is_refused():
    with pytest.raises(ValueError):
        HostTier(-1)


# -- the region file ---------------------------------------------------------------------------


@pytest.fixture
def region(tmp_path):
    region = HostRegion(tmp_path / "region", num_slots=6, slot_bytes=16)
    yield region
    region.close()


def test_region_file_has_the_header_and_size(region):
    raw = region.path.read_bytes()
    assert len(raw) == HEADER_BYTES + 6 * 16 == region.size_bytes
    assert raw[: len(MAGIC)] == MAGIC and raw[len(MAGIC) : len(MAGIC) + TOKEN_BYTES] == region.token
    assert region.first_slot_offset_bytes == HEADER_BYTES and region.slot_offset(2) == HEADER_BYTES + 32


def test_region_bytes_run_through_non_contiguous_slots(region):
    data = bytes(range(40))  # 2.5 slots
    region.write([4, 1, 3], 0, data)
    raw = region.path.read_bytes()  # the file itself, as an engine that maps it sees it
    assert raw[region.slot_offset(4) : region.slot_offset(4) + 16] == data[0:16]
    assert raw[region.slot_offset(1) : region.slot_offset(1) + 16] == data[16:32]
    assert raw[region.slot_offset(3) : region.slot_offset(3) + 8] == data[32:40]
    assert raw[region.slot_offset(0) : region.slot_offset(0) + 16] == bytes(16)  # untouched
    assert region.read([4, 1, 3], 0, 40) == data
    assert region.read([4, 1, 3], 10, 25) == data[10:35]  # a range across two slot boundaries


def test_region_writes_at_an_offset_across_a_boundary(region):
    region.write([5, 0], 0, bytes(32))
    region.write([5, 0], 12, b"abcdefghij")  # 4 bytes end slot 5, 6 bytes start slot 0
    assert region.read([5, 0], 0, 32) == bytes(12) + b"abcdefghij" + bytes(10)
    raw = region.path.read_bytes()
    assert raw[region.slot_offset(5) + 12 : region.slot_offset(5) + 16] == b"abcd"
    assert raw[region.slot_offset(0) : region.slot_offset(0) + 6] == b"efghij"


def test_region_refuses_bytes_beyond_the_slots(region):
    with pytest.raises(ValueError, match="exceed 2 slots"):
        region.write([1, 2], 20, bytes(13))
    with pytest.raises(ValueError, match="exceed 1 slots"):
        region.read([1], 0, 17)


def test_region_close_unlinks_the_file(tmp_path):
    region = HostRegion(tmp_path / "gone", num_slots=2, slot_bytes=8)
    assert region.path.exists()
    region.close()
    assert not region.path.exists()


def test_each_region_gets_its_own_token(tmp_path):
    first, second = HostRegion(tmp_path / "a", 1, 8), HostRegion(tmp_path / "b", 1, 8)
    try:
        assert first.token != second.token and len(first.token) == TOKEN_BYTES
    finally:
        first.close()
        second.close()
