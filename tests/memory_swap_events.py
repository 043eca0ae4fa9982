"""Random swap events of engines sharing one host tier: the driver of the ledger invariant tests.

Each engine is modelled by its real device block manager (services/engine/block_pool.py) and the
phase of each of its requests; the memory side is a backend (the SwapManager in-process, or the
real service over gRPC). A request's KV is where its phase says, and nowhere else:

    phase          device blocks   host record            how it gets there
    RUNNING        yes             none                   admit, grow, restore done, recompute
    SWAPPING_OUT   yes             RESERVED (bytes going)  preempt -> plan says SWAP
    SWAPPED        no              SWAPPED, or none when   bytes written + committed, blocks freed
                                   another engine's plan dropped it (it learns at BeginRestore)
    RESTORING      yes             RESTORING (pinned)     BeginRestore granted, blocks allocated
    WAITING        no              none                   plan says RECOMPUTE, or dropped

So KV is in at most one tier, except while its bytes move (SWAPPING_OUT, RESTORING), when it is in
exactly the two tiers of that transfer. `check` verifies this, the device pools block by block,
and the backend's own ledger after every event; aborts hit requests in every phase.
"""

from __future__ import annotations

import collections
import enum
import random
from dataclasses import dataclass, field
from typing import Protocol

from services.engine.block_pool import KvBlockManager
from services.memory.eviction_policy import CodecCost, KvCodec, Victim

BLOCK_SIZE_TOKENS = 4
MAX_TOKENS = 64  # 16 blocks: every request fits an empty pool
MAX_REQUESTS_PER_ENGINE = 16  # admission stops here (an engine's queue is bounded too)
# Encoded bytes per device block for each codec (full, int8 with scales, int4 with scales/minimums).
BYTES_PER_BLOCK = {KvCodec.FULL: 96, KvCodec.INT8: 52, KvCodec.INT4: 28}

Key = tuple[str, str]  # (engine_id, request_id)
Swaps = dict[str, tuple[list[int], int]]  # request_id -> (slot ids, size in bytes) of each SWAP decision


class Phase(enum.Enum):
    RUNNING = "running"
    SWAPPING_OUT = "swapping out"
    SWAPPED = "swapped"
    RESTORING = "restoring"
    WAITING = "waiting"


ON_DEVICE = {Phase.RUNNING, Phase.SWAPPING_OUT, Phase.RESTORING}


@dataclass
class SimRequest:
    request_id: str  # "<engine>/r<n>": unique across engines (dropped ids come without engine)
    num_tokens: int  # tokens whose KV it holds (or will recompute)
    phase: Phase
    slot_ids: list[int] = field(default_factory=list)  # host slots of its current swap
    size_bytes: int = 0  # bytes of its current swap (the plan's size for the chosen codec)
    payload: bytes = b""  # the bytes written for its current swap


@dataclass
class SimEngine:
    engine_id: str
    kv: KvBlockManager  # the engine's real device block bookkeeping
    requests: dict[str, SimRequest] = field(default_factory=dict)
    num_reports: int = 0  # ReportUsage sequence number


class SwapBackend(Protocol):
    """The memory side, in-process or over gRPC."""

    def register(self, engine_id: str, num_device_blocks: int) -> None: ...
    def plan(self, engine_id: str, victims: list[Victim], errors: dict[KvCodec, float]) -> tuple[Swaps, list[Key]]: ...
    def write_and_commit(self, engine_id: str, request_id: str, slot_ids: list[int], payload: bytes) -> bool: ...
    def commit(self, engine_id: str, request_ids: list[str]) -> list[str]: ...
    def begin_restore(self, engine_id: str, request_id: str) -> tuple[list[int], int] | None: ...
    def read(self, engine_id: str, request_id: str, slot_ids: list[int], size_bytes: int) -> bytes: ...
    def release(self, engine_id: str, request_ids: list[str]) -> None: ...
    def report(self, engine_id: str, used: int, free: int, num_requests: int, sequence_number: int) -> None: ...
    def violations(self, expected_host: dict[Key, tuple[Phase, int]]) -> list[str]: ...


class EventDriver:
    """Applies seeded random events and checks every invariant after each one."""

    def __init__(self, backend: SwapBackend, seed: int, engine_ids: tuple[str, ...], num_device_blocks: int) -> None:
        self.backend = backend
        self.rng = random.Random(seed)
        self.engines = {e: SimEngine(e, KvBlockManager(num_device_blocks, BLOCK_SIZE_TOKENS)) for e in engine_ids}
        self.host: dict[Key, int] = {}  # what the host tier must hold: slots per record
        self.counts: collections.Counter[str] = collections.Counter()  # events and paths taken
        self._next_id = 0
        for engine_id in engine_ids:
            backend.register(engine_id, num_device_blocks)
        self._events = [
            (self.admit, 3),
            (self.grow, 4),
            (self.preempt, 2),
            (self.finish_swap_out, 2),
            (self.begin_restore, 2),
            (self.finish_restore, 2),
            (self.recompute, 2),
            (self.abort, 1.2),
            (self.finish, 1.5),
        ]

    def run(self, num_events: int) -> None:
        functions, weights = zip(*self._events)
        for _ in range(num_events):
            engine = self.engines[self.rng.choice(sorted(self.engines))]
            self.rng.choices(functions, weights)[0](engine)
            self._report(engine)
            self.check()

    def _pick(self, engine: SimEngine, *phases: Phase) -> SimRequest | None:
        candidates = [r for r in engine.requests.values() if r.phase in phases]
        return self.rng.choice(candidates) if candidates else None

    # -- events -------------------------------------------------------------------------------------

    def admit(self, engine: SimEngine) -> None:
        if len(engine.requests) >= MAX_REQUESTS_PER_ENGINE:
            return
        self._next_id += 1
        request = SimRequest(f"{engine.engine_id}/r{self._next_id}", self.rng.randint(1, 24), Phase.WAITING)
        engine.requests[request.request_id] = request
        self.counts["admit"] += 1
        self.recompute(engine, request)

    def grow(self, engine: SimEngine) -> None:
        request = self._pick(engine, Phase.RUNNING)
        if request is None or request.num_tokens >= MAX_TOKENS:
            return
        num_tokens = min(MAX_TOKENS, request.num_tokens + self.rng.randint(1, 8))
        if engine.kv.allocate_slots(request.request_id, num_tokens):
            request.num_tokens = num_tokens
            self.counts["grow"] += 1
        else:  # KV blocks ran short: the scheduler preempts, this request among the victims
            self.counts["grow short"] += 1
            self.preempt(engine, forced=request)

    def preempt(self, engine: SimEngine, forced: SimRequest | None = None) -> None:
        running = [r for r in engine.requests.values() if r.phase is Phase.RUNNING and r is not forced]
        victims = self.rng.sample(running, min(len(running), self.rng.randint(0 if forced else 1, 3)))
        victims += [forced] if forced else []
        if not victims:
            return
        errors = self.rng.choice(
            [
                {},
                {KvCodec.INT8: 0.01},
                {KvCodec.INT8: 0.01, KvCodec.INT4: 0.015},
                {KvCodec.INT8: 0.01, KvCodec.INT4: 0.08},
            ]
        )
        swaps, dropped = self.backend.plan(engine.engine_id, [self._victim(engine, r) for r in victims], errors)
        self.counts["plan"] += 1
        for key in dropped:  # swapped requests of any engine lost their host KV
            self.host.pop(key)
            self.counts["dropped"] += 1
            if key[0] == engine.engine_id:  # the planning engine is told; others learn at BeginRestore
                engine.requests[key[1]].phase = Phase.WAITING
        for request in victims:
            if request.request_id in swaps:
                request.phase = Phase.SWAPPING_OUT
                request.slot_ids, request.size_bytes = swaps[request.request_id]
                self.host[(engine.engine_id, request.request_id)] = len(request.slot_ids)
                self.counts["plan swap"] += 1
            else:
                engine.kv.free(request.request_id)
                request.phase = Phase.WAITING
                self.counts["plan recompute"] += 1

    def _victim(self, engine: SimEngine, request: SimRequest) -> Victim:
        num_blocks = len(engine.kv.block_table(request.request_id))
        out_s = self.rng.choice([0.0, self.rng.uniform(0.001, 0.03)])  # 0 = unmeasured: size / assumed rate
        codecs = tuple(
            CodecCost(codec, num_blocks * per_block, out_s * scale, out_s * scale)
            for (codec, per_block), scale in zip(BYTES_PER_BLOCK.items(), (1.0, 0.6, 0.4))
        )
        return Victim(
            request.request_id,
            request.num_tokens,
            recompute_s=self.rng.uniform(0.001, 0.05),
            expected_wait_s=self.rng.expovariate(1 / 0.05),
            codecs=codecs,
        )

    def finish_swap_out(self, engine: SimEngine) -> None:
        request = self._pick(engine, Phase.SWAPPING_OUT)
        if request is None:
            return
        request.payload = self.rng.randbytes(request.size_bytes)
        assert self.backend.write_and_commit(engine.engine_id, request.request_id, request.slot_ids, request.payload)
        engine.kv.free(request.request_id)  # the bytes are safe in the host tier
        request.phase = Phase.SWAPPED
        self.counts["swap out"] += 1

    def begin_restore(self, engine: SimEngine) -> None:
        request = self._pick(engine, Phase.SWAPPED)
        if request is None or not engine.kv.allocate_slots(request.request_id, request.num_tokens):
            return
        grant = self.backend.begin_restore(engine.engine_id, request.request_id)
        if grant is None:  # dropped by another engine's plan: recompute into the new blocks
            assert (engine.engine_id, request.request_id) not in self.host
            request.phase = Phase.RUNNING
            self.counts["restore refused"] += 1
            return
        assert grant == (request.slot_ids, request.size_bytes), (grant, request)
        request.phase = Phase.RESTORING
        self.counts["restore granted"] += 1

    def finish_restore(self, engine: SimEngine) -> None:
        request = self._pick(engine, Phase.RESTORING)
        if request is None:
            return
        data = self.backend.read(engine.engine_id, request.request_id, request.slot_ids, request.size_bytes)
        assert data == request.payload, f"{request.request_id}: bytes changed in the host tier"
        self._release(engine, request)
        request.phase = Phase.RUNNING
        self.counts["restore done"] += 1

    def recompute(self, engine: SimEngine, request: SimRequest | None = None) -> None:
        request = request or self._pick(engine, Phase.WAITING)
        if request is not None and engine.kv.allocate_slots(request.request_id, request.num_tokens):
            request.phase = Phase.RUNNING
            self.counts["recompute"] += 1

    def abort(self, engine: SimEngine, request: SimRequest | None = None) -> None:
        request = request or self._pick(engine, *Phase)
        if request is None:
            return
        engine.kv.free(request.request_id)
        self._release(engine, request)
        if request.phase is Phase.SWAPPING_OUT and self.rng.random() < 0.5:  # the writer's late commit
            assert self.backend.commit(engine.engine_id, [request.request_id]) == []
            self.counts["late commit refused"] += 1
        del engine.requests[request.request_id]
        self.counts[f"abort {request.phase.value}"] += 1

    def finish(self, engine: SimEngine) -> None:
        request = self._pick(engine, Phase.RUNNING)
        if request is not None:
            engine.kv.free(request.request_id)
            del engine.requests[request.request_id]
            self.counts["finish"] += 1

    def abort_everything(self) -> None:
        for engine in self.engines.values():
            for request in list(engine.requests.values()):
                self.abort(engine, request)
            self._report(engine)
        self.check()

    def _release(self, engine: SimEngine, request: SimRequest) -> None:
        if request.phase in (Phase.SWAPPING_OUT, Phase.SWAPPED, Phase.RESTORING):
            self.backend.release(engine.engine_id, [request.request_id])
            self.host.pop((engine.engine_id, request.request_id), None)

    def _report(self, engine: SimEngine) -> None:
        engine.num_reports += 1
        pool = engine.kv.pool
        self.backend.report(
            engine.engine_id,
            pool.num_used_blocks,
            pool.num_free_blocks,
            engine.kv.num_requests_holding_blocks,
            engine.num_reports,
        )

    # -- invariants ---------------------------------------------------------------------------------

    def check(self) -> None:
        found = []
        for engine in self.engines.values():
            found += device_violations(engine)
            for request in engine.requests.values():
                key, table = (engine.engine_id, request.request_id), engine.kv.block_table(request.request_id)
                if bool(table) != (request.phase in ON_DEVICE):
                    found.append(f"{key} {request.phase.value}: device blocks {table}")
                in_host, in_transfer = key in self.host, request.phase in (Phase.SWAPPING_OUT, Phase.RESTORING)
                if in_host != in_transfer and request.phase is not Phase.SWAPPED:  # SWAPPED: kept or dropped
                    found.append(f"{key} {request.phase.value}: host record {'present' if in_host else 'missing'}")
        leaked = [key for key in self.host if key[1] not in self.engines[key[0]].requests]
        found += [f"host record of a request that is gone: {key}" for key in leaked]
        expected = {
            key: (self.engines[key[0]].requests[key[1]].phase, num)
            for key, num in self.host.items()
            if key not in leaked
        }
        found += self.backend.violations(expected)
        assert found == [], found


def device_violations(engine: SimEngine) -> list[str]:
    """used + free == total, and every block either free or in exactly one request's table."""
    pool, owner_of, found = engine.kv.pool, {}, []
    for request_id in engine.requests:
        for block in engine.kv.block_table(request_id):
            if block in owner_of:
                found.append(f"{engine.engine_id}: block {block} in {owner_of[block]} and {request_id}")
            owner_of[block] = request_id
    free = pool._free_block_ids  # no public view of the free list; the test needs every id
    if len(set(free)) != len(free) or set(free) & owner_of.keys():
        found.append(f"{engine.engine_id}: a block is free twice, or free and held")
    if set(free) | owner_of.keys() != set(range(pool.num_blocks_total)):
        found.append(f"{engine.engine_id}: blocks lost: neither free nor held")
    if pool.num_used_blocks + pool.num_free_blocks != pool.num_blocks_total or pool.num_used_blocks != len(owner_of):
        found.append(f"{engine.engine_id}: used {pool.num_used_blocks} + free {pool.num_free_blocks} != total")
    return found
