"""Table tests of the memory manager's decision functions (services/memory/eviction_policy.py).

Each row is one situation and the decision it must produce. Sizes are in slots of 1 MiB; times in
milliseconds of stall (swap out + the part of the swap in not hidden by the wait) vs recompute.
"""

from __future__ import annotations

import math

import pytest

from services.memory.eviction_policy import (
    Action,
    CodecCost,
    DroppableEntry,
    KvCodec,
    PlanSettings,
    Victim,
    allowed_codecs,
    plan_eviction,
    swap_stall_s,
)

MIB = 1024 * 1024
BUDGET = 0.02  # max relative error of lossy codecs
SETTINGS = PlanSettings(slot_bytes=MIB, max_relative_error=BUDGET, assumed_bytes_per_s=1e9)
NOW_S = 1000.0  # clock of the plan; droppable entries carry absolute resume times
FULL, INT8, INT4 = KvCodec.FULL, KvCodec.INT8, KvCodec.INT4
MEASURED = {INT8: 0.008, INT4: 0.015}  # both within the budget
INT8_ONLY = {INT8: 0.008, INT4: 0.09}  # int4 over the budget


def cost(codec: KvCodec, num_slots: float, out_ms: float, in_ms: float) -> CodecCost:
    return CodecCost(codec, int(num_slots * MIB), out_ms / 1e3, in_ms / 1e3)


def victim(request_id: str, recompute_ms: float, wait_ms: float, *codecs: CodecCost) -> Victim:
    return Victim(
        request_id, num_kv_tokens=512, recompute_s=recompute_ms / 1e3, expected_wait_s=wait_ms / 1e3, codecs=codecs
    )


def droppable(request_id: str, num_slots: int, resume_in_s: float) -> DroppableEntry:
    return DroppableEntry(("other", request_id), num_slots, NOW_S + resume_in_s)


# Three codecs of one 8-slot KV: full 8 slots, int8 4, int4 2; times scale with size.
FULL_8 = cost(FULL, 8, 10, 10)
INT8_4 = cost(INT8, 4, 4, 4)
INT4_2 = cost(INT4, 2, 2, 2)


@pytest.mark.parametrize(
    ("case", "candidate", "num_free_slots", "errors", "expected"),
    [
        (
            "recompute: swap stalls 20 ms > 15 ms recompute",
            victim("r", 15, 0, FULL_8),
            64,
            {},
            (Action.RECOMPUTE, None),
        ),
        (
            "recompute: a stall equal to recompute does not pay",
            victim("r", 20, 0, FULL_8),
            64,
            {},
            (Action.RECOMPUTE, None),
        ),
        (
            "full: 20 ms stall < 50 ms recompute",
            victim("r", 50, 0, FULL_8, INT8_4, INT4_2),
            64,
            MEASURED,
            (Action.SWAP, FULL),
        ),
        (
            "int8: full does not pay (20 ms >= 15 ms), int8 does (8 ms)",
            victim("r", 15, 0, FULL_8, INT8_4, INT4_2),
            64,
            MEASURED,
            (Action.SWAP, INT8),
        ),
        (
            "int8: full pays but needs 8 slots, 5 free",
            victim("r", 500, 0, FULL_8, INT8_4, INT4_2),
            5,
            MEASURED,
            (Action.SWAP, INT8),
        ),
        (
            "int4: only int4 pays and it is within budget",
            victim("r", 5, 0, FULL_8, INT8_4, INT4_2),
            64,
            MEASURED,
            (Action.SWAP, INT4),
        ),
        (
            "recompute: only int4 pays but its error 0.09 is over budget",
            victim("r", 5, 0, FULL_8, INT8_4, INT4_2),
            64,
            INT8_ONLY,
            (Action.RECOMPUTE, None),
        ),
        (
            "int4: only int4 fits (2 of 3 free slots), within budget",
            victim("r", 500, 0, FULL_8, INT8_4, INT4_2),
            3,
            MEASURED,
            (Action.SWAP, INT4),
        ),
        (
            "recompute: int8 would pay but was never measured",
            victim("r", 15, 0, FULL_8, INT8_4),
            64,
            {},
            (Action.RECOMPUTE, None),
        ),
        (
            "recompute: nothing fits in 1 free slot",
            victim("r", 500, 0, FULL_8, INT8_4, INT4_2),
            1,
            MEASURED,
            (Action.RECOMPUTE, None),
        ),
        ("recompute: the engine offered no codec", victim("r", 500, 0), 64, MEASURED, (Action.RECOMPUTE, None)),
        (
            "prefetch: swap-in of 40 ms hidden by an 80 ms wait: stall 5 ms < 30 ms",
            victim("r", 30, 80, cost(FULL, 8, 5, 40)),
            64,
            {},
            (Action.SWAP, FULL),
        ),
        (
            "prefetch: the same KV with no wait stalls 45 ms > 30 ms",
            victim("r", 30, 0, cost(FULL, 8, 5, 40)),
            64,
            {},
            (Action.RECOMPUTE, None),
        ),
        (
            "unmeasured times: 8 MiB at the assumed 1 GB/s stalls 16.8 ms > 15 ms",
            victim("r", 15, 0, cost(FULL, 8, 0, 0)),
            64,
            {},
            (Action.RECOMPUTE, None),
        ),
        (
            "unmeasured times: swap-in hidden by a 10 ms wait, stall 8.4 ms < 15 ms",
            victim("r", 15, 10, cost(FULL, 8, 0, 0)),
            64,
            {},
            (Action.SWAP, FULL),
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_single_victim_decision(case, candidate, num_free_slots, errors, expected):
    plan = plan_eviction(
        [candidate], num_free_slots=num_free_slots, droppable=[], codec_errors=errors, settings=SETTINGS, now_s=NOW_S
    )
    (decision,) = plan.decisions
    assert (decision.action, decision.codec) == expected, decision.reason
    assert plan.dropped == ()
    if decision.action is Action.SWAP:
        chosen = next(c for c in candidate.codecs if c.codec is decision.codec)
        assert decision.size_bytes == chosen.size_bytes
        assert decision.num_slots == math.ceil(chosen.size_bytes / MIB)
    else:
        assert (decision.size_bytes, decision.num_slots) == (0, 0)
    assert decision.reason  # every decision says why


def test_reason_names_the_rejected_codecs():
    plan = plan_eviction(
        [victim("r", 5, 0, FULL_8, INT8_4, INT4_2)],
        num_free_slots=64,
        droppable=[],
        codec_errors=INT8_ONLY,
        settings=SETTINGS,
        now_s=NOW_S,
    )
    reason = plan.decisions[0].reason
    assert "full: stall 20.00 ms >= recompute 5.00 ms" in reason
    assert "int4: error over budget or unmeasured" in reason


@pytest.mark.parametrize(
    ("out_ms", "in_ms", "size_slots", "wait_ms", "expected_ms"),
    [
        (10, 20, 8, 0, 30),  # nothing hidden: out + in
        (10, 20, 8, 5, 25),  # 5 ms of the swap-in hidden by the wait
        (10, 20, 8, 50, 10),  # the whole swap-in prefetched: out only
        (0, 0, 1, 0, 2 * MIB / 1e6),  # unmeasured: size / assumed 1 GB/s, each way
        (3, 0, 1, 0.5, 3 + MIB / 1e6 - 0.5),  # out measured, in assumed
    ],
)
def test_swap_stall_s(out_ms, in_ms, size_slots, wait_ms, expected_ms):
    stall_s = swap_stall_s(cost(FULL, size_slots, out_ms, in_ms), wait_ms / 1e3, 1e9)
    assert stall_s == pytest.approx(expected_ms / 1e3)


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ({}, {FULL}),  # lossy codecs not measured: full precision only
        ({INT8: 0.01}, {FULL, INT8}),
        ({INT8: BUDGET}, {FULL, INT8}),  # at the budget is within it
        ({INT8: 0.03, INT4: 0.01}, {FULL, INT4}),  # each codec judged on its own error
        ({INT8: 0.01, INT4: 0.09}, {FULL, INT8}),
        ({FULL: 5.0}, {FULL}),  # full precision is always allowed
    ],
)
def test_allowed_codecs(errors, expected):
    assert allowed_codecs(errors, BUDGET) == expected


def test_short_tier_places_the_shortest_wait_first():
    long_wait, short_wait = victim("long", 500, 5000, FULL_8), victim("short", 500, 100, FULL_8)
    plan = plan_eviction(
        [long_wait, short_wait], num_free_slots=8, droppable=[], codec_errors={}, settings=SETTINGS, now_s=NOW_S
    )
    assert [d.request_id for d in plan.decisions] == ["long", "short"]  # the request's order
    assert [d.action for d in plan.decisions] == [Action.RECOMPUTE, Action.SWAP]


def test_short_tier_gives_the_later_victim_a_smaller_codec():
    first, second = victim("a", 500, 100, FULL_8, INT8_4), victim("b", 500, 200, FULL_8, INT8_4)
    plan = plan_eviction(
        [second, first], num_free_slots=12, droppable=[], codec_errors=MEASURED, settings=SETTINGS, now_s=NOW_S
    )
    assert [(d.request_id, d.codec) for d in plan.decisions] == [("b", INT8), ("a", FULL)]


DROPPABLE = [droppable("x", 4, 100.0), droppable("y", 4, 50.0), droppable("z", 4, 2.0)]


@pytest.mark.parametrize(
    ("case", "num_slots", "wait_s", "num_free_slots", "expected_action", "expected_dropped"),
    [
        ("one entry covers it: the longest wait goes", 4, 10.0, 0, Action.SWAP, ["x"]),
        ("two needed: longest first, never z (back in 2 s)", 6, 10.0, 0, Action.SWAP, ["x", "y"]),
        ("free slots count first", 5, 10.0, 2, Action.SWAP, ["x"]),
        ("fits in free slots: nothing dropped", 4, 10.0, 4, Action.SWAP, []),
        ("only x waits longer than the victim (60 s), 4 < 6", 6, 60.0, 0, Action.RECOMPUTE, []),
        ("x alone is enough for a 60 s victim", 4, 60.0, 0, Action.SWAP, ["x"]),
        ("everyone is back sooner than a 200 s victim", 1, 200.0, 0, Action.RECOMPUTE, []),
        ("all three later than a 1 s victim", 12, 1.0, 0, Action.SWAP, ["x", "y", "z"]),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_dropping_swapped_entries_for_room(case, num_slots, wait_s, num_free_slots, expected_action, expected_dropped):
    candidate = victim("v", 1e6, wait_s * 1e3, cost(FULL, num_slots, 1, 1))
    plan = plan_eviction(
        [candidate],
        num_free_slots=num_free_slots,
        droppable=list(DROPPABLE),
        codec_errors={},
        settings=SETTINGS,
        now_s=NOW_S,
    )
    assert plan.decisions[0].action is expected_action, plan.decisions[0].reason
    assert [request_id for _, request_id in plan.dropped] == expected_dropped


def test_an_entry_due_back_with_the_victim_is_not_dropped():
    entry = droppable("same", 8, 10.0)
    plan = plan_eviction(
        [victim("v", 1e6, 10_000, cost(FULL, 8, 1, 1))],
        num_free_slots=0,
        droppable=[entry],
        codec_errors={},
        settings=SETTINGS,
        now_s=NOW_S,
    )
    assert plan.decisions[0].action is Action.RECOMPUTE and plan.dropped == ()


def test_victims_of_one_event_share_the_droppable_entries():
    # a (back in 1 s) may take x's slots; b (back in 20 s) may not take y's (back in 10 s).
    a, b = victim("a", 1e6, 1_000, cost(FULL, 4, 1, 1)), victim("b", 1e6, 20_000, cost(FULL, 4, 1, 1))
    entries = [droppable("x", 4, 100.0), droppable("y", 4, 10.0)]
    plan = plan_eviction([b, a], num_free_slots=0, droppable=entries, codec_errors={}, settings=SETTINGS, now_s=NOW_S)
    assert [(d.request_id, d.action) for d in plan.decisions] == [("b", Action.RECOMPUTE), ("a", Action.SWAP)]
    assert plan.dropped == (("other", "x"),)


def test_plan_is_pure():
    entries = list(DROPPABLE)
    candidates = [victim("v", 1e6, 1_000, cost(FULL, 6, 1, 1))]
    first = plan_eviction(
        candidates, num_free_slots=0, droppable=entries, codec_errors={}, settings=SETTINGS, now_s=NOW_S
    )
    second = plan_eviction(
        candidates, num_free_slots=0, droppable=entries, codec_errors={}, settings=SETTINGS, now_s=NOW_S
    )
    assert first == second and entries == DROPPABLE
