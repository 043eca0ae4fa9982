"""The memory manager's decision: for each victim of a preemption event, swap (in which codec) or
recompute. Plain functions over plain values, so they are table-tested and the simulator uses them.

For one victim, each way of setting its KV aside stalls its engine for:

    recompute:      recompute_s                          (prefill of its KV tokens, engine cost model)
    swap, codec c:  swap_out_s(c) + max(0, swap_in_s(c) - expected_wait_s)
                    (moving out stalls now; moving back is prefetched while it waits, so only the
                     part longer than its expected wait stalls the batch)

where the swap times are the engine's measured ones, or size / assumed bandwidth until measured.
A lossy codec (int8, int4) is a candidate only when its measured error on this engine's KV is
within the error budget.

Rule, precision first: take the most precise candidate codec that stalls less than recomputing and
fits in the host tier; compression is chosen when full precision does not pay (slow link, short
KV) or does not fit. Victims are placed in order of expected wait, shortest first: host memory held
for a short wait saves the same recompute for less time held.

Host tier full: a victim may take the slots of swapped requests (of any engine) that expect to wait
longer than it does, longest wait first; those fall back to recompute ("dropped"). Dropping is the
last resort: a less precise codec that fits in the free slots is taken first. Requests whose
bytes are being written or read (reserved, restoring) are never dropped.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class KvCodec(enum.Enum):
    """How swapped KV is encoded, most precise first (mirrors alise.v1.KvCodec)."""

    FULL = "full"  # the engine's KV dtype, bit for bit
    INT8 = "int8"  # int8, per (block, layer, K/V, head) scales
    INT4 = "int4"  # int4, per group of head dims scale and minimum


PRECISION_ORDER = (KvCodec.FULL, KvCodec.INT8, KvCodec.INT4)


class Action(enum.Enum):
    SWAP = "swap"
    RECOMPUTE = "recompute"


@dataclass(frozen=True)
class CodecCost:
    """One way to store a victim's KV, as the engine measured it."""

    codec: KvCodec
    size_bytes: int  # bytes in the host tier
    swap_out_s: float  # measured time to move out (encode + copy); 0 = not measured
    swap_in_s: float  # measured time to move back (copy + decode); 0 = not measured


@dataclass(frozen=True)
class Victim:
    """One request of the event."""

    request_id: str
    num_kv_tokens: int  # tokens of KV it holds
    recompute_s: float  # engine time to recompute them, seconds
    expected_wait_s: float  # expected time until it runs again, seconds
    codecs: tuple[CodecCost, ...]  # every codec the engine can produce


@dataclass(frozen=True)
class DroppableEntry:
    """A committed swapped request (of any engine) whose slots may be taken back."""

    key: tuple[str, str]  # (engine_id, request_id)
    num_slots: int  # slots it holds
    expected_resume_at_s: float  # clock time it is expected to run again


@dataclass(frozen=True)
class PlanSettings:
    """The service's side of the decision."""

    slot_bytes: int  # host tier allocation unit, bytes
    max_relative_error: float  # error budget of lossy codecs (relative Frobenius error)
    assumed_bytes_per_s: float  # transfer rate used until the engine has measured one


@dataclass(frozen=True)
class Decision:
    """The plan for one victim."""

    request_id: str
    action: Action
    codec: KvCodec | None  # SWAP only
    size_bytes: int  # SWAP only: bytes to write
    num_slots: int  # SWAP only: host slots it needs
    reason: str  # why, in words


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]  # in the victims' order
    dropped: tuple[tuple[str, str], ...]  # (engine_id, request_id) of swapped requests dropped for room


def swap_stall_s(cost: CodecCost, expected_wait_s: float, assumed_bytes_per_s: float) -> float:
    """Seconds the engine stalls to swap out now and back in after expected_wait_s (prefetched)."""
    out_s = cost.swap_out_s or cost.size_bytes / assumed_bytes_per_s
    in_s = cost.swap_in_s or cost.size_bytes / assumed_bytes_per_s
    return out_s + max(0.0, in_s - expected_wait_s)


def allowed_codecs(errors: dict[KvCodec, float], max_relative_error: float) -> set[KvCodec]:
    """FULL always; a lossy codec only when measured (present in errors) and within the budget."""
    allowed = {KvCodec.FULL}
    allowed.update(
        codec for codec, error in errors.items() if codec is not KvCodec.FULL and error <= max_relative_error
    )
    return allowed


def plan_eviction(
    victims: list[Victim],
    *,
    num_free_slots: int,
    droppable: list[DroppableEntry],
    codec_errors: dict[KvCodec, float],
    settings: PlanSettings,
    now_s: float,
) -> Plan:
    """Decides every victim of one event (see the module docstring); pure: changes nothing."""
    allowed = allowed_codecs(codec_errors, settings.max_relative_error)
    # Droppable entries, the longest expected wait first (the first to give up their slots).
    pool = sorted(droppable, key=lambda entry: entry.expected_resume_at_s, reverse=True)
    free_slots = num_free_slots
    dropped: list[tuple[str, str]] = []
    by_id: dict[str, Decision] = {}
    for victim in sorted(victims, key=lambda v: v.expected_wait_s):
        resume_at_s = now_s + victim.expected_wait_s
        decision, needed = _decide_one(victim, allowed, settings, free_slots, pool, resume_at_s)
        if decision.action is Action.SWAP:
            while free_slots < needed:  # _decide_one checked that the droppable entries cover it
                entry = pool.pop(0)
                dropped.append(entry.key)
                free_slots += entry.num_slots
            free_slots -= needed
        by_id[victim.request_id] = decision
    return Plan(tuple(by_id[v.request_id] for v in victims), tuple(dropped))


def _decide_one(
    victim: Victim,
    allowed: set[KvCodec],
    settings: PlanSettings,
    free_slots: int,
    droppable_longest_first: list[DroppableEntry],
    resume_at_s: float,
) -> tuple[Decision, int]:
    """The most precise allowed codec that beats recompute and fits; else recompute."""
    reclaimable = sum(e.num_slots for e in droppable_longest_first if e.expected_resume_at_s > resume_at_s)
    if reclaimable:  # a codec that fits in free slots beats a more precise one that drops others' KV
        decision, needed = _decide_one(victim, allowed, settings, free_slots, [], resume_at_s)
        if decision.action is Action.SWAP:
            return decision, needed
    reasons = []
    for cost in sorted(victim.codecs, key=lambda c: PRECISION_ORDER.index(c.codec)):
        name = cost.codec.value
        if cost.codec not in allowed:
            reasons.append(f"{name}: error over budget or unmeasured")
            continue
        stall_s = swap_stall_s(cost, victim.expected_wait_s, settings.assumed_bytes_per_s)
        if stall_s >= victim.recompute_s:
            reasons.append(f"{name}: stall {stall_s * 1e3:.2f} ms >= recompute {victim.recompute_s * 1e3:.2f} ms")
            continue
        num_slots = math.ceil(cost.size_bytes / settings.slot_bytes)
        if num_slots > free_slots + reclaimable:
            reasons.append(f"{name}: {num_slots} slots do not fit ({free_slots} free)")
            continue
        reason = f"{name}: stall {stall_s * 1e3:.2f} ms < recompute {victim.recompute_s * 1e3:.2f} ms"
        return Decision(victim.request_id, Action.SWAP, cost.codec, cost.size_bytes, num_slots, reason), num_slots
    reason = "; ".join(reasons) or "no codec offered"
    return Decision(victim.request_id, Action.RECOMPUTE, None, 0, 0, reason), 0
