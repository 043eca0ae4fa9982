"""The memory service's swap negotiation: plans, reservations, commits, restores and releases,
kept consistent with the ledger.

Every change to a swap record is mirrored into the ledger's host pool (one owner per swapped
request, holding its slot count), so the ledger's used + free == total check and the slot-level
check of host_tier.py watch the same tier from two sides; `violations` also compares them.

Engines are identified by engine_id; a call for an unregistered engine raises UnknownEngine (the
engine re-registers), and (re-)registration frees whatever host slots the engine held before: a
restarted engine has lost the requests they belonged to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from services.memory.eviction_policy import (
    Action,
    Decision,
    DroppableEntry,
    KvCodec,
    PlanSettings,
    Victim,
    plan_eviction,
)
from services.memory.host_region import HostRegion
from services.memory.host_tier import HostTier, HostTierError, RecordKey, RecordState, SwapRecord
from services.memory.ledger import EngineRegistration, KvLedger, UnknownEngine
from services.memory.pool import BlockOwner

STREAM_CHUNK_BYTES = 1024 * 1024  # streamed transfer chunk (gRPC's default message limit is 4 MiB)


@dataclass
class SwapCounters:
    """What was decided and moved since start."""

    num_plans: int = 0  # PlanEviction events
    num_swapped_by_codec: dict[KvCodec, int] = field(default_factory=lambda: {codec: 0 for codec in KvCodec})
    num_recompute: int = 0  # victims planned to recompute
    num_dropped: int = 0  # swapped requests dropped to recompute for room
    num_restores_granted: int = 0
    num_restores_refused: int = 0
    num_streamed_bytes_in: int = 0  # written through UploadSwapped
    num_streamed_bytes_out: int = 0  # read through DownloadSwapped


@dataclass(frozen=True)
class PlannedVictim:
    """A decision with the slots reserved for it (empty for recompute)."""

    decision: Decision
    slot_ids: tuple[int, ...]


class SwapManager:
    """Owns the host tier's records and region on behalf of the registered engines."""

    def __init__(
        self,
        ledger: KvLedger,
        region: HostRegion | None,
        settings: PlanSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        self.region = region
        self.settings = settings
        self.tier = HostTier(region.num_slots if region else 0)
        self.counters = SwapCounters()
        self._clock = clock

    # -- engines ------------------------------------------------------------------------------

    def register(self, registration: EngineRegistration) -> bool:
        self._forget_engine(registration.engine_id)
        return self.ledger.register(registration)

    def unregister(self, engine_id: str) -> bool:
        self._forget_engine(engine_id)
        return self.ledger.unregister(engine_id)

    def expire_silent(self, silent_for_s: float) -> list[str]:
        """Unregisters every engine silent for longer than silent_for_s (killed, hung or cut off), which
        releases its device ledger and its host-tier slots; returns their ids. A live engine that was
        only slow is told `accepted=False` at its next report and registers again."""
        expired = self.ledger.silent_engines(silent_for_s)
        for engine_id in expired:
            self.unregister(engine_id)
        return expired

    def _forget_engine(self, engine_id: str) -> None:
        for key in [record.key for record in self.tier.records() if record.key[0] == engine_id]:
            self._release(key)

    # -- the negotiation ----------------------------------------------------------------------

    def plan(
        self, engine_id: str, victims: list[Victim], codec_errors: dict[KvCodec, float]
    ) -> tuple[list[PlannedVictim], list[RecordKey]]:
        """Decides every victim at once, drops what the plan drops, reserves slots for swaps."""
        self._require_engine(engine_id)
        now_s = self._clock()
        for victim in victims:  # a re-planned request gives its old slots back first
            self._release((engine_id, victim.request_id))
        droppable = [DroppableEntry(r.key, len(r.slot_ids), r.expected_resume_at_s) for r in self.tier.droppable()]
        plan = plan_eviction(
            victims,
            num_free_slots=self.tier.num_free_slots,
            droppable=droppable,
            codec_errors=codec_errors,
            settings=self.settings,
            now_s=now_s,
        )
        for key in plan.dropped:
            self._release(key)
        self.counters.num_dropped += len(plan.dropped)
        self.counters.num_plans += 1
        wait_by_id = {victim.request_id: victim.expected_wait_s for victim in victims}
        planned = [
            self._apply(engine_id, decision, now_s + wait_by_id[decision.request_id]) for decision in plan.decisions
        ]
        return planned, list(plan.dropped)

    def _apply(self, engine_id: str, decision: Decision, resume_at_s: float) -> PlannedVictim:
        if decision.action is Action.RECOMPUTE:
            self.counters.num_recompute += 1
            return PlannedVictim(decision, ())
        key = (engine_id, decision.request_id)
        record = self.tier.reserve(key, decision.num_slots, decision.size_bytes, decision.codec, resume_at_s)
        self._mirror(key)
        self.counters.num_swapped_by_codec[decision.codec] += 1
        return PlannedVictim(decision, tuple(record.slot_ids))

    def commit(self, engine_id: str, request_ids: list[str]) -> list[str]:
        self._require_engine(engine_id)
        return [request_id for request_id in request_ids if self.tier.commit((engine_id, request_id))]

    def begin_restore(self, engine_id: str, request_ids: list[str]) -> list[SwapRecord | None]:
        """Pins each restorable request; None for those that are not (dropped, unknown, unwritten)."""
        self._require_engine(engine_id)
        records = [self.tier.pin((engine_id, request_id)) for request_id in request_ids]
        granted = sum(record is not None for record in records)
        self.counters.num_restores_granted += granted
        self.counters.num_restores_refused += len(records) - granted
        return records

    def release(self, engine_id: str, request_ids: list[str]) -> int:
        """Frees the requests' slots in any state (also mid-swap); unknown ids are ignored."""
        self._require_engine(engine_id)
        return sum(self._release((engine_id, request_id)) for request_id in request_ids)

    # -- the streamed data path ---------------------------------------------------------------

    def commit_upload(self, engine_id: str, request_id: str, num_bytes: int) -> None:
        """Commits a streamed upload only when every reserved byte arrived."""
        record = self._record_in(engine_id, request_id, RecordState.RESERVED)
        if num_bytes != record.size_bytes:
            raise HostTierError(f"upload of {request_id!r} ended after {num_bytes} of {record.size_bytes} bytes")
        self.tier.commit((engine_id, request_id))

    def write_chunk(self, engine_id: str, request_id: str, offset_bytes: int, data: bytes) -> None:
        """Writes an uploaded chunk into a RESERVED record's slots."""
        record = self._record_in(engine_id, request_id, RecordState.RESERVED)
        if offset_bytes + len(data) > record.size_bytes:
            raise HostTierError(
                f"chunk [{offset_bytes}, {offset_bytes + len(data)}) exceeds the {record.size_bytes} bytes reserved"
            )
        self.region.write(record.slot_ids, offset_bytes, data)
        self.counters.num_streamed_bytes_in += len(data)

    def read_chunks(self, engine_id: str, request_id: str) -> Iterator[tuple[int, bytes]]:
        """(offset, chunk) of a RESTORING record's bytes, in order, read lazily (a record may be
        large); each chunk re-checks that the record is still pinned, so a release during the
        stream ends it (HostTierError) instead of reading slots that another record now holds."""
        record = self._record_in(engine_id, request_id, RecordState.RESTORING)
        for offset in range(0, record.size_bytes, STREAM_CHUNK_BYTES):
            if self.tier.get(record.key) is not record:
                raise HostTierError(f"request {request_id!r} was released during its download")
            chunk = self.region.read(record.slot_ids, offset, min(STREAM_CHUNK_BYTES, record.size_bytes - offset))
            self.counters.num_streamed_bytes_out += len(chunk)
            yield offset, chunk

    def _record_in(self, engine_id: str, request_id: str, state: RecordState) -> SwapRecord:
        self._require_engine(engine_id)
        record = self.tier.get((engine_id, request_id))
        if record is None or record.state is not state:
            found = "no record" if record is None else f"state {record.state.value}"
            raise HostTierError(f"request {request_id!r} of engine {engine_id!r}: {found}, expected {state.value}")
        return record

    # -- consistency ----------------------------------------------------------------------------

    def violations(self) -> list[str]:
        """The ledger's invariants, the host tier's slot invariants, and their agreement."""
        found = self.ledger.check_invariants() + self.tier.violations()
        ledger_view = {(owner.engine_id, owner.request_id): count for owner, count in self.ledger.host_owners().items()}
        if ledger_view != self.tier.held_by_engine():
            found.append("host tier records and the ledger's host pool disagree")
        return found

    def _release(self, key: RecordKey) -> int:
        freed = self.tier.release(key)
        if freed:
            self._mirror(key)
        return freed

    def _mirror(self, key: RecordKey) -> None:
        record = self.tier.get(key)
        self.ledger.set_host_blocks(BlockOwner(*key), len(record.slot_ids) if record else 0)

    def _require_engine(self, engine_id: str) -> None:
        if self.ledger.registration(engine_id) is None:
            raise UnknownEngine(f"engine {engine_id!r} is not registered")
