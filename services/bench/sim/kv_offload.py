"""The simulator's KV eviction handler: a host tier on the virtual clock, decided by the memory
manager's own `plan_eviction` (services/memory/eviction_policy.py).

Modes: `recompute` (no handler: vLLM's default), `swap` (full precision only), `swap-compress`
(full, int8 and int4, a lossy codec only within the error budget). Per preemption event (one per
step) the victims are planned together; the host tier is slots of `host_slot_bytes`, and a swapped
request holds ceil(its bytes / slot bytes) of them until it is restored, discarded or dropped.

Time charged on the virtual clock, as stall seconds added to the step (take_step_stall_s):

    evict at t:      the engine asks the memory service for a plan (plan_latency_s, one call per
                     event), then the victims' swap-outs run one after another on the device->host
                     link before the model overwrites their blocks: the step stalls for the call plus
                     the sum of their swap-out times
    prefetch at t':  the swap-in starts when the host->device link is free (transfers queue, first
                     named first) and its copy is written: ready_at = max(t', link free, written) + in_s
    restore at t'':  the step stalls for max(0, latest ready_at of its restores - t'') (a restore never
                     prefetched queues on the link then); out and in stalls of one step add up

Where prefetched KV waits between ready_at and its restore is not charged to the device KV pool
(an engine stages it in spare memory); `peak_prefetched_bytes` says how much that was at most, and
`prefetch=False` (`--no-prefetch`) charges every swap-in in full at its restore instead.
A request dropped by the plan (its slots given to a victim expecting a shorter wait) is lost: its
`ensure_restorable` is False and the scheduler recomputes it. An entry whose swap-in is in flight is
never dropped (the plan's "restoring" rule); one whose prefetch has completed may be (its staged copy
goes with it). Nor is one the scheduler claimed (ensure_restorable) at this clock time: admission
runs before the step's evictions are settled, so without this a plan could drop a request that the
same step is restoring. Invariant: used + free host slots == total, always.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable

from services.bench.sim.kv_codecs import INT4_RELATIVE_ERROR, INT8_RELATIVE_ERROR, CodecTimes, KvLayout, codec_costs
from services.engine.request import Request
from services.engine.scheduler.kv_eviction import EvictedKv, KvRestore
from services.memory.eviction_policy import (
    PRECISION_ORDER,
    Action,
    CodecCost,
    DroppableEntry,
    KvCodec,
    PlanSettings,
    Victim,
    allowed_codecs,
    plan_eviction,
)

SIM_ENGINE_ID = "sim"  # the one engine sharing the simulated host tier
DEFAULT_HOST_LINK_BYTES_PER_S = 25e9  # H100 PCIe Gen5 x16 pinned host<->device copy, effective, per direction


class OffloadMode(str, enum.Enum):
    RECOMPUTE = "recompute"  # every victim recomputes (no handler)
    SWAP = "swap"  # full precision swap when it beats recompute and fits
    SWAP_COMPRESS = "swap-compress"  # full, int8 or int4 (within the error budget)


OFFLOAD_MODES = tuple(mode.value for mode in OffloadMode)


@dataclass(frozen=True)
class KvOffloadConfig:
    """Settings of the simulated memory manager."""

    mode: OffloadMode  # which codecs victims may be swapped in
    layout: KvLayout  # the engine's KV block shape (sizes every codec)
    times: CodecTimes  # link and GPU rates
    host_tier_bytes: int  # host memory for swapped KV
    host_slot_bytes: int  # host tier allocation unit
    max_relative_error: float  # error budget of lossy codecs (relative Frobenius error)
    int8_relative_error: float = INT8_RELATIVE_ERROR  # measured error of the int8 codec
    int4_relative_error: float = INT4_RELATIVE_ERROR  # measured error of the int4 codec
    prefetch: bool = True  # False: ignore prefetch hints, every swap-in stalls its restore in full
    plan_latency_s: float = 0.0  # engine <-> memory service round trip per eviction event (0 = not charged)

    def __post_init__(self) -> None:
        if self.host_tier_bytes < 0:
            raise ValueError(f"host_tier_bytes must be >= 0, got {self.host_tier_bytes}")
        if self.host_slot_bytes <= 0:
            raise ValueError(f"host_slot_bytes must be > 0, got {self.host_slot_bytes}")
        for name in ("max_relative_error", "int8_relative_error", "int4_relative_error", "plan_latency_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def num_host_slots(self) -> int:
        return self.host_tier_bytes // self.host_slot_bytes

    @property
    def codecs(self) -> tuple[KvCodec, ...]:
        """The codecs the engine offers the plan in this mode."""
        return PRECISION_ORDER if self.mode is OffloadMode.SWAP_COMPRESS else (KvCodec.FULL,)

    @property
    def codec_errors(self) -> dict[KvCodec, float]:
        """Measured errors the plan checks against the budget (lossy codecs only)."""
        if self.mode is not OffloadMode.SWAP_COMPRESS:
            return {}
        return {KvCodec.INT8: self.int8_relative_error, KvCodec.INT4: self.int4_relative_error}


@dataclass
class OffloadCounters:
    """What the handler did in one simulated run."""

    num_swaps_by_codec: dict[str, int] = field(default_factory=lambda: {c.value: 0 for c in KvCodec})  # swap-outs
    num_plans: int = 0  # eviction events planned (one memory service call each)
    num_recompute_decisions: int = 0  # victims the plan sent to recompute
    num_dropped: int = 0  # swapped requests dropped for room (they recompute)
    num_restores: int = 0  # swapped requests brought back
    num_restores_hidden: int = 0  # restores whose prefetch had finished: no stall
    num_restores_not_prefetched: int = 0  # restores that started their swap-in at admission
    swap_out_bytes: int = 0  # bytes moved device -> host
    swap_in_bytes: int = 0  # bytes moved host -> device
    swap_out_stall_s: float = 0.0  # step time spent writing victims out
    swap_in_stall_s: float = 0.0  # step time spent waiting for swap-ins
    peak_host_used_bytes: int = 0  # most host tier bytes held at once (slot-rounded)
    peak_prefetched_bytes: int = 0  # most bytes prefetched and not yet restored at once


@dataclass
class HostEntry:
    """One swapped request in the host tier."""

    codec: KvCodec  # how its KV is stored
    size_bytes: int  # bytes stored
    num_slots: int  # host slots held
    swap_in_s: float  # time to bring it back (copy + dequantize)
    written_at_s: float  # when its swap-out completes
    expected_resume_at_s: float  # when the scheduler expected it to run again (at eviction)
    ready_at_s: float | None = None  # when its prefetched swap-in completes; None = not started
    claimed_at_s: float | None = None  # last time the scheduler checked it before admitting it


class SimKvOffload:
    """A `KvEvictionHandler` (services/engine/scheduler/kv_eviction.py) on the simulator's clock."""

    saves_kv = True

    def __init__(self, config: KvOffloadConfig, clock: Callable[[], float]) -> None:
        if config.mode is OffloadMode.RECOMPUTE:
            raise ValueError("recompute mode has no handler (the scheduler's RecomputeOnly)")
        self.config = config
        self.clock = clock
        self.counters = OffloadCounters()
        self.num_total_slots = config.num_host_slots
        self.num_free_slots = self.num_total_slots
        self.entries: dict[str, HostEntry] = {}  # by request id
        self._dropped: set[str] = set()  # dropped, not yet told to the scheduler
        self._settings = PlanSettings(config.host_slot_bytes, config.max_relative_error, config.times.link_bytes_per_s)
        self._in_link_free_at_s = 0.0
        self._prefetched_bytes = 0
        self._step_stall_s = 0.0

    # -- the KvEvictionHandler protocol ----------------------------------------------------

    def evict(self, victims: list[EvictedKv]) -> set[str]:
        """Plans all victims of the step at once; swap-outs stall this step."""
        now_s = self.clock()
        costs = {v.request.request_id: self._costs(v.num_kv_tokens) for v in victims}
        plan = plan_eviction(
            [_victim(v, costs[v.request.request_id]) for v in victims],
            num_free_slots=self.num_free_slots,
            droppable=self._droppable(now_s),
            codec_errors=self.config.codec_errors,
            settings=self._settings,
            now_s=now_s,
        )
        for _, request_id in plan.dropped:
            self._drop(request_id)
        self.counters.num_plans += 1
        saved: set[str] = set()
        out_s = self.config.plan_latency_s
        for victim, decision in zip(victims, plan.decisions):
            if decision.action is Action.RECOMPUTE:
                self.counters.num_recompute_decisions += 1
                continue
            cost = next(c for c in costs[decision.request_id] if c.codec is decision.codec)
            out_s += cost.swap_out_s
            self._store(decision.request_id, cost, decision.num_slots, now_s + out_s, now_s + victim.expected_wait_s)
            saved.add(decision.request_id)
        self._step_stall_s += out_s
        self.counters.swap_out_stall_s += out_s
        return saved

    def ensure_restorable(self, request: Request) -> bool:
        """True and claimed (not droppable by this step's plan) while its KV is held."""
        entry = self.entries.get(request.request_id)
        if entry is not None:
            entry.claimed_at_s = self.clock()
            return True
        self._dropped.discard(request.request_id)
        return False

    def prefetch(self, requests: list[Request]) -> None:
        """Starts the swap-in of each named request not started yet, in order, on the in-link."""
        if not self.config.prefetch:
            return
        now_s = self.clock()
        for request in requests:
            entry = self.entries.get(request.request_id)
            if entry is None or entry.ready_at_s is not None:
                continue
            entry.ready_at_s = self._queue_swap_in(entry, now_s)
            self._prefetched_bytes += entry.size_bytes
            self.counters.peak_prefetched_bytes = max(self.counters.peak_prefetched_bytes, self._prefetched_bytes)

    def restore(self, restores: list[KvRestore]) -> None:
        """The step waits for the last of its restores to arrive."""
        now_s = self.clock()
        latest_s = now_s
        for restore in restores:
            entry = self._release(restore.request_id)
            if entry.ready_at_s is None:
                self.counters.num_restores_not_prefetched += 1
                ready_s = self._queue_swap_in(entry, now_s)
            else:
                ready_s = entry.ready_at_s
                if ready_s <= now_s:
                    self.counters.num_restores_hidden += 1
            latest_s = max(latest_s, ready_s)
            self.counters.num_restores += 1
            self.counters.swap_in_bytes += entry.size_bytes
        self._step_stall_s += latest_s - now_s
        self.counters.swap_in_stall_s += latest_s - now_s

    def discard(self, request_id: str) -> None:
        if request_id in self.entries:
            self._release(request_id)
        self._dropped.discard(request_id)

    def preemption_cost_s(self, num_kv_tokens: int, num_blocks: int, recompute_s: float) -> float:
        """The cheapest allowed codec's swap out + in (no prefetch credit: an upper bound), or
        recompute_s when the host tier could never hold it."""
        allowed = allowed_codecs(self.config.codec_errors, self.config.max_relative_error)
        round_trips = [
            cost.swap_out_s + cost.swap_in_s
            for cost in self._costs(num_kv_tokens)
            if cost.codec in allowed and cost.size_bytes <= self.config.host_tier_bytes
        ]
        return min(round_trips + [recompute_s])

    # -- the simulator's side --------------------------------------------------------------

    def take_step_stall_s(self) -> float:
        """Seconds of swap stall charged to the current step (since the last call); resets."""
        stall_s, self._step_stall_s = self._step_stall_s, 0.0
        return stall_s

    def check_invariants(self) -> list[str]:
        """Broken invariants of the host tier, in words (empty = consistent)."""
        problems = []
        used = sum(entry.num_slots for entry in self.entries.values())
        if used + self.num_free_slots != self.num_total_slots:
            problems.append(f"used {used} + free {self.num_free_slots} != total {self.num_total_slots}")
        if self.num_free_slots < 0:
            problems.append(f"free slots {self.num_free_slots} < 0")
        if self._dropped & set(self.entries):
            problems.append(f"dropped and stored at once: {sorted(self._dropped & set(self.entries))}")
        prefetched = sum(e.size_bytes for e in self.entries.values() if e.ready_at_s is not None)
        if prefetched != self._prefetched_bytes:
            problems.append(f"prefetched bytes {self._prefetched_bytes} != entries' {prefetched}")
        return problems

    # -- internals -------------------------------------------------------------------------

    def _costs(self, num_kv_tokens: int) -> tuple[CodecCost, ...]:
        return codec_costs(self.config.layout, self.config.times, num_kv_tokens, self.config.codecs)

    def _droppable(self, now_s: float) -> list[DroppableEntry]:
        """Entries neither being read back nor claimed for admission in this step."""
        return [
            DroppableEntry((SIM_ENGINE_ID, request_id), entry.num_slots, entry.expected_resume_at_s)
            for request_id, entry in self.entries.items()
            if (entry.ready_at_s is None or entry.ready_at_s <= now_s)
            and (entry.claimed_at_s is None or entry.claimed_at_s < now_s)
        ]

    def _store(self, request_id: str, cost: CodecCost, num_slots: int, written_at_s: float, resume_at_s: float) -> None:
        if num_slots > self.num_free_slots:
            raise RuntimeError(f"plan overcommitted the host tier: {num_slots} slots, {self.num_free_slots} free")
        self.entries[request_id] = HostEntry(
            cost.codec, cost.size_bytes, num_slots, cost.swap_in_s, written_at_s, resume_at_s
        )
        self.num_free_slots -= num_slots
        counters = self.counters
        counters.num_swaps_by_codec[cost.codec.value] += 1
        counters.swap_out_bytes += cost.size_bytes
        used_bytes = (self.num_total_slots - self.num_free_slots) * self.config.host_slot_bytes
        counters.peak_host_used_bytes = max(counters.peak_host_used_bytes, used_bytes)

    def _drop(self, request_id: str) -> None:
        self._release(request_id)
        self._dropped.add(request_id)
        self.counters.num_dropped += 1

    def _release(self, request_id: str) -> HostEntry:
        entry = self.entries.pop(request_id)
        self.num_free_slots += entry.num_slots
        if entry.ready_at_s is not None:
            self._prefetched_bytes -= entry.size_bytes
        return entry

    def _queue_swap_in(self, entry: HostEntry, now_s: float) -> float:
        """Books the host->device link for the entry; returns when its copy is done."""
        start_s = max(now_s, self._in_link_free_at_s, entry.written_at_s)
        self._in_link_free_at_s = start_s + entry.swap_in_s
        return self._in_link_free_at_s


def _victim(evicted: EvictedKv, costs: tuple[CodecCost, ...]) -> Victim:
    """The plan's view of one of the scheduler's victims."""
    request_id = evicted.request.request_id
    return Victim(request_id, evicted.num_kv_tokens, evicted.recompute_s, evicted.expected_wait_s, costs)


def make_handler(config: KvOffloadConfig | None, clock: Callable[[], float]) -> SimKvOffload | None:
    """The handler of a mode; None (the scheduler's RecomputeOnly) for recompute."""
    if config is None or config.mode is OffloadMode.RECOMPUTE:
        return None
    return SimKvOffload(config, clock)
