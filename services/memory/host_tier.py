"""The host tier's slots and who holds them: one record per swapped request.

The shared region (host_region.py) is cut into equal slots; a swapped request holds a list of
slots, not necessarily contiguous, and its bytes run through them in order:

    region:  [ header | slot 0 | slot 1 | slot 2 | slot 3 | slot 4 | ... ]
    record (e1, r7): slots [3, 0, 4], size 2.5 slots -> bytes 0..S in slot 3, S..2S in slot 0, ...

A record moves through states, driven by the engine's calls:

    reserve (PlanEviction) -> RESERVED --commit--> SWAPPED --pin (BeginRestore)--> RESTORING
    any state --release--> gone (restored, aborted, finished);  SWAPPED --drop--> gone (room needed)

Only SWAPPED records are droppable: RESERVED and RESTORING ones have bytes in flight.

Invariants (`violations` lists every broken one):
- every slot is either free or held by exactly one record (no slot in two places, none lost);
- num free + num held == num_slots_total.
Plain Python; not thread-safe (the service calls it from one event loop).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from services.memory.eviction_policy import KvCodec

RecordKey = tuple[str, str]  # (engine_id, request_id)


class RecordState(enum.Enum):
    RESERVED = "reserved"  # slots planned, the engine is writing the bytes
    SWAPPED = "swapped"  # bytes complete; restorable, and droppable when room is needed
    RESTORING = "restoring"  # pinned: the engine is reading the bytes back


@dataclass
class SwapRecord:
    """One swapped request's place in the host tier."""

    key: RecordKey  # (engine_id, request_id)
    slot_ids: list[int]  # slots holding its bytes, in byte order
    size_bytes: int  # bytes of its encoded KV
    codec: KvCodec  # how the bytes encode the KV
    expected_resume_at_s: float  # clock time it is expected to run again (drop order)
    state: RecordState


class HostTierError(ValueError):
    """A call that does not match a record's state (unknown request, wrong state)."""


class HostTier:
    """Slot allocator plus the swap records that hold slots."""

    def __init__(self, num_slots_total: int) -> None:
        if num_slots_total < 0:
            raise ValueError(f"num_slots_total must be >= 0, got {num_slots_total}")
        self.num_slots_total = num_slots_total
        self._free_slot_ids: list[int] = list(range(num_slots_total - 1, -1, -1))
        self._records: dict[RecordKey, SwapRecord] = {}

    @property
    def num_free_slots(self) -> int:
        return len(self._free_slot_ids)

    @property
    def num_used_slots(self) -> int:
        return self.num_slots_total - len(self._free_slot_ids)

    def get(self, key: RecordKey) -> SwapRecord | None:
        return self._records.get(key)

    def records(self) -> list[SwapRecord]:
        return list(self._records.values())

    def reserve(
        self, key: RecordKey, num_slots: int, size_bytes: int, codec: KvCodec, resume_at_s: float
    ) -> SwapRecord:
        """Takes num_slots free slots for a new record; an old record of the same key is released
        first (the engine re-planned a request whose earlier swap it abandoned)."""
        self.release(key)
        if num_slots > len(self._free_slot_ids):
            raise HostTierError(f"{key}: needs {num_slots} slots, {len(self._free_slot_ids)} free")
        taken = self._free_slot_ids[len(self._free_slot_ids) - num_slots :][::-1]  # ascending: fewer copy runs
        del self._free_slot_ids[len(self._free_slot_ids) - num_slots :]
        record = SwapRecord(key, taken, size_bytes, codec, resume_at_s, RecordState.RESERVED)
        self._records[key] = record
        return record

    def commit(self, key: RecordKey) -> bool:
        """RESERVED -> SWAPPED; False when there is no reserved record (released or dropped)."""
        record = self._records.get(key)
        if record is None or record.state is not RecordState.RESERVED:
            return False
        record.state = RecordState.SWAPPED
        return True

    def pin(self, key: RecordKey) -> SwapRecord | None:
        """SWAPPED -> RESTORING (idempotent for RESTORING); None when it is not restorable."""
        record = self._records.get(key)
        if record is None or record.state is RecordState.RESERVED:
            return None
        record.state = RecordState.RESTORING
        return record

    def release(self, key: RecordKey) -> int:
        """Frees the record's slots in any state; the number of slots freed (0 if unknown)."""
        record = self._records.pop(key, None)
        if record is None:
            return 0
        self._free_slot_ids.extend(reversed(record.slot_ids))
        return len(record.slot_ids)

    def release_engine(self, engine_id: str) -> int:
        """Frees every record of an engine (it left or restarted); slots freed."""
        return sum(self.release(key) for key in [key for key in self._records if key[0] == engine_id])

    def droppable(self) -> list[SwapRecord]:
        return [record for record in self._records.values() if record.state is RecordState.SWAPPED]

    def violations(self) -> list[str]:
        """Broken invariants, each a sentence; empty when consistent."""
        found = []
        owner_of: dict[int, RecordKey] = {}
        for record in self._records.values():
            for slot in record.slot_ids:
                if slot in owner_of:
                    found.append(f"host slot {slot} held by both {owner_of[slot]} and {record.key}")
                owner_of[slot] = record.key
        free = set(self._free_slot_ids)
        if len(free) != len(self._free_slot_ids):
            found.append("host tier: a slot is in the free list twice")
        both = free & owner_of.keys()
        if both:
            found.append(f"host slots both free and held: {sorted(both)[:8]}")
        if len(free) + len(owner_of) != self.num_slots_total:
            found.append(f"host tier: {len(free)} free + {len(owner_of)} held != {self.num_slots_total} slots")
        out_of_range = [s for s in list(free) + list(owner_of) if not 0 <= s < self.num_slots_total]
        if out_of_range:
            found.append(f"host slots out of range: {out_of_range[:8]}")
        return found

    def held_by_engine(self) -> dict[RecordKey, int]:
        """Slots per record, for the ledger cross-check."""
        return {key: len(record.slot_ids) for key, record in self._records.items()}
