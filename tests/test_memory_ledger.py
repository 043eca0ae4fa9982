"""KvLedger and BlockPool: registration, reports, staleness, invariants (plain Python, no gRPC)."""

from __future__ import annotations

import random

import pytest

from services.memory.ledger import (
    EngineRegistration,
    KvBlockLayout,
    KvDtype,
    KvLedger,
    LedgerError,
    ReportOutcome,
    UnknownEngine,
    UsageReport,
)
from services.memory.pool import BlockOwner, BlockPool, PoolExhausted, Tier

BLOCK_BYTES = 4096


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def make_layout(block_bytes: int = BLOCK_BYTES) -> KvBlockLayout:
    return KvBlockLayout(
        block_size_tokens=16, num_layers=2, num_kv_heads=2, head_dim=8, dtype=KvDtype.FLOAT32, block_bytes=block_bytes
    )


def make_registration(engine_id: str = "e1", num_device_blocks: int = 10, **kwargs) -> EngineRegistration:
    layout = kwargs.pop("layout", make_layout())
    return EngineRegistration(
        engine_id=engine_id,
        address=kwargs.pop("address", "127.0.0.1:1"),
        model_name="tiny",
        num_device_blocks=num_device_blocks,
        layout=layout,
    )


def make_report(
    engine_id: str = "e1", used: int = 3, free: int = 7, seq: int = 1, num_requests: int = 2
) -> UsageReport:
    return UsageReport(
        engine_id=engine_id,
        num_device_blocks_used=used,
        num_device_blocks_free=free,
        num_requests=num_requests,
        sequence_number=seq,
    )


def make_ledger(clock: FakeClock | None = None, host_blocks: int = 0) -> KvLedger:
    return KvLedger(
        host_tier_capacity_bytes=host_blocks * BLOCK_BYTES,
        host_tier_block_bytes=BLOCK_BYTES,
        stale_after_s=5.0,
        clock=clock or FakeClock(),
    )


def engine_usage(ledger: KvLedger, engine_id: str):
    (usage,) = [engine for engine in ledger.snapshot().engines if engine.registration.engine_id == engine_id]
    return usage


def test_register_then_report_updates_device_tier():
    ledger = make_ledger()
    assert ledger.register(make_registration("e1", 10)) is False
    usage = engine_usage(ledger, "e1")
    assert (usage.device.num_blocks_total, usage.device.num_blocks_used, usage.has_reported) == (10, 0, False)

    assert ledger.report(make_report("e1", used=3, free=7, seq=1, num_requests=2)) is ReportOutcome.ACCEPTED
    usage = engine_usage(ledger, "e1")
    assert usage.device.tier is Tier.DEVICE
    assert (usage.device.num_blocks_used, usage.device.num_blocks_free) == (3, 7)
    assert usage.device.used_bytes == 3 * BLOCK_BYTES
    assert usage.num_requests == 2 and usage.has_reported
    assert ledger.check_invariants() == []


def test_reregistration_is_idempotent_and_updates_address_and_layout():
    ledger = make_ledger()
    ledger.register(make_registration("e1", 10))
    ledger.report(make_report("e1", used=3, free=7, seq=9))
    new_layout = make_layout(block_bytes=2 * BLOCK_BYTES)
    assert ledger.register(make_registration("e1", 20, address="127.0.0.1:2", layout=new_layout)) is True
    snapshot = ledger.snapshot()
    assert len(snapshot.engines) == 1
    usage = snapshot.engines[0]
    assert usage.registration.address == "127.0.0.1:2"
    assert usage.registration.layout.block_bytes == 2 * BLOCK_BYTES
    assert (usage.device.num_blocks_total, usage.device.num_blocks_used, usage.has_reported) == (20, 0, False)
    # A restarted engine counts from 1 again: its first report after re-registration is not stale.
    assert ledger.report(make_report("e1", used=5, free=15, seq=1)) is ReportOutcome.ACCEPTED
    assert ledger.check_invariants() == []


def test_stale_and_duplicate_reports_are_ignored():
    ledger = make_ledger()
    ledger.register(make_registration("e1", 10))
    assert ledger.report(make_report(used=4, free=6, seq=5)) is ReportOutcome.ACCEPTED
    assert ledger.report(make_report(used=9, free=1, seq=3)) is ReportOutcome.STALE
    assert ledger.report(make_report(used=9, free=1, seq=5)) is ReportOutcome.STALE
    assert engine_usage(ledger, "e1").device.num_blocks_used == 4
    assert ledger.report(make_report(used=8, free=2, seq=6)) is ReportOutcome.ACCEPTED
    assert engine_usage(ledger, "e1").device.num_blocks_used == 8


def test_report_whose_counts_do_not_add_up_is_rejected_and_changes_nothing():
    ledger = make_ledger()
    ledger.register(make_registration("e1", 10))
    ledger.report(make_report(used=2, free=8, seq=1))
    with pytest.raises(LedgerError, match=r"3 used \+ 8 free device blocks, but registered 10"):
        ledger.report(make_report(used=3, free=8, seq=2))
    assert engine_usage(ledger, "e1").device.num_blocks_used == 2
    # The rejected report did not advance the sequence number.
    assert ledger.report(make_report(used=3, free=7, seq=2)) is ReportOutcome.ACCEPTED


def test_report_from_unknown_engine_is_not_applied():
    ledger = make_ledger()
    assert ledger.report(make_report("ghost")) is ReportOutcome.UNKNOWN_ENGINE
    assert ledger.snapshot().engines == ()


@pytest.mark.parametrize(
    "build",
    [
        lambda: make_registration(engine_id=""),
        lambda: make_registration(num_device_blocks=0),
        lambda: make_layout(block_bytes=0),
        lambda: make_report(used=-1),
        lambda: make_report(engine_id=""),
    ],
    ids=["empty-engine-id", "zero-blocks", "zero-block-bytes", "negative-used", "report-empty-id"],
)
def test_domain_records_refuse_invalid_values(build):
    with pytest.raises(LedgerError):
        build()


def test_unregister_releases_every_tier():
    ledger = make_ledger(host_blocks=8)
    ledger.register(make_registration("e1", 10))
    ledger.register(make_registration("e2", 10))
    ledger.report(make_report("e1", used=6, free=4))
    ledger.set_host_blocks(BlockOwner("e1", "r1"), 3)
    ledger.set_host_blocks(BlockOwner("e2", "r9"), 2)
    assert ledger.host_usage().num_blocks_used == 5
    assert ledger.unregister("e1") is True
    assert ledger.unregister("e1") is False
    assert [engine.registration.engine_id for engine in ledger.snapshot().engines] == ["e2"]
    assert ledger.host_usage().num_blocks_used == 2
    assert ledger.check_invariants() == []


def test_host_tier_capacity_is_enforced_and_defaults_to_empty():
    ledger = make_ledger(host_blocks=0)
    ledger.register(make_registration("e1"))
    assert (ledger.host_usage().num_blocks_total, ledger.host_usage().tier) == (0, Tier.HOST)
    with pytest.raises(PoolExhausted):
        ledger.set_host_blocks(BlockOwner("e1", "r1"), 1)
    with pytest.raises(UnknownEngine):
        ledger.set_host_blocks(BlockOwner("ghost", "r1"), 0)

    ledger = make_ledger(host_blocks=4)
    ledger.register(make_registration("e1"))
    ledger.set_host_blocks(BlockOwner("e1", "r1"), 3)
    with pytest.raises(PoolExhausted, match="1 of 4 are available"):
        ledger.set_host_blocks(BlockOwner("e1", "r2"), 2)
    ledger.set_host_blocks(BlockOwner("e1", "r1"), 4)  # growing one's own holding counts it once
    usage = ledger.host_usage()
    assert (usage.num_blocks_used, usage.num_blocks_free, usage.used_bytes) == (4, 0, 4 * BLOCK_BYTES)


def test_host_capacity_in_bytes_rounds_down_to_whole_blocks():
    ledger = KvLedger(
        host_tier_capacity_bytes=10 * BLOCK_BYTES + 100, host_tier_block_bytes=BLOCK_BYTES, stale_after_s=1.0
    )
    assert ledger.host_usage().num_blocks_total == 10


def test_silent_engines_are_reported_stale_with_their_age_not_dropped():
    clock = FakeClock()
    ledger = make_ledger(clock)
    ledger.register(make_registration("e1"))
    ledger.register(make_registration("e2"))
    clock.now_s += 2.0
    ledger.report(make_report("e2", seq=1))
    clock.now_s += 4.0  # e1: 6 s since registration; e2: 4 s since its report (stale after 5 s)
    by_id = {engine.registration.engine_id: engine for engine in ledger.snapshot().engines}
    assert by_id["e1"].report_age_s == pytest.approx(6.0) and by_id["e1"].is_stale
    assert by_id["e2"].report_age_s == pytest.approx(4.0) and not by_id["e2"].is_stale


def test_check_invariants_detects_corruption():
    ledger = make_ledger(host_blocks=4)
    ledger.register(make_registration("e1", 10))
    ledger.report(make_report("e1", used=3, free=7))
    assert ledger.check_invariants() == []

    entry = ledger._engines["e1"]  # corrupt the private state the public API keeps consistent
    entry.device_pool._num_blocks_by_owner[BlockOwner("e1")] = 12
    entry.device_pool._num_blocks_by_owner[BlockOwner("e2")] = 0
    ledger._host_pool._num_blocks_by_owner[BlockOwner("gone", "r1")] = 2
    violations = "\n".join(ledger.check_invariants())
    assert "12 blocks used of 10 total" in violations
    assert "holds 0 blocks (must be > 0)" in violations
    assert "held by other engines' records" in violations
    assert "pool holds 12 blocks, last report says 3" in violations
    assert "belongs to unregistered engine 'gone'" in violations
    assert ledger.snapshot().is_consistent is False


def test_check_invariants_detects_a_report_that_no_longer_fits_the_pool():
    ledger = make_ledger()
    ledger.register(make_registration("e1", 10))
    ledger.report(make_report("e1", used=3, free=7))
    ledger._engines["e1"].last_report = make_report("e1", used=3, free=9)
    assert ledger.check_invariants() == ["engine 'e1' device tier: last report used + free != 10 total"]


def test_block_pool_set_held_rejects_negative_counts():
    pool = BlockPool(Tier.HOST, 4, BLOCK_BYTES)
    with pytest.raises(ValueError, match=">= 0"):
        pool.set_held(BlockOwner("e1"), -1)
    pool.set_held(BlockOwner("e1"), 2)
    pool.set_held(BlockOwner("e1"), 0)
    assert pool.owners() == {}


def test_random_event_sequence_keeps_invariants_and_matches_a_model():
    """A few thousand register/report/host/unregister events; after each one the ledger agrees with
    a plain dict model and check_invariants() is empty."""
    rng = random.Random(1234)
    clock = FakeClock()
    ledger = make_ledger(clock, host_blocks=32)
    engine_ids = [f"e{i}" for i in range(6)]
    model_total: dict[str, int] = {}  # engine -> registered device blocks
    model_used: dict[str, int] = {}  # engine -> last accepted used blocks
    model_seq: dict[str, int | None] = {}  # engine -> last accepted sequence number
    model_host: dict[BlockOwner, int] = {}
    for _ in range(4000):
        clock.now_s += rng.random()
        engine_id = rng.choice(engine_ids)
        action = rng.random()
        if action < 0.15:
            num_blocks = rng.randint(1, 50)
            layout = make_layout(rng.choice([BLOCK_BYTES, 2 * BLOCK_BYTES]))
            previous = ledger.registration(engine_id)
            was_registered = ledger.register(make_registration(engine_id, num_blocks, layout=layout))
            assert was_registered == (engine_id in model_total)
            if previous is not None and previous.layout != layout:
                model_host = {owner: n for owner, n in model_host.items() if owner.engine_id != engine_id}
            model_total[engine_id], model_used[engine_id], model_seq[engine_id] = num_blocks, 0, None
        elif action < 0.22:
            assert ledger.unregister(engine_id) == (engine_id in model_total)
            for table in (model_total, model_used, model_seq):
                table.pop(engine_id, None)
            model_host = {owner: n for owner, n in model_host.items() if owner.engine_id != engine_id}
        elif action < 0.35:
            _random_host_event(rng, ledger, engine_id, model_total, model_host)
        else:
            _random_report(rng, ledger, engine_id, model_total, model_used, model_seq)
        assert ledger.check_invariants() == []
        snapshot = ledger.snapshot()
        assert {e.registration.engine_id: e.device.num_blocks_used for e in snapshot.engines} == model_used
        assert snapshot.host.num_blocks_used == sum(model_host.values())


def _random_host_event(rng, ledger, engine_id, model_total, model_host) -> None:
    owner = BlockOwner(engine_id, f"r{rng.randint(0, 3)}")
    num_blocks = rng.randint(0, 12)
    fits = sum(model_host.values()) - model_host.get(owner, 0) + num_blocks <= 32
    if engine_id not in model_total:
        with pytest.raises(UnknownEngine):
            ledger.set_host_blocks(owner, num_blocks)
    elif not fits:
        with pytest.raises(PoolExhausted):
            ledger.set_host_blocks(owner, num_blocks)
    else:
        ledger.set_host_blocks(owner, num_blocks)
        model_host[owner] = num_blocks
        if num_blocks == 0:
            del model_host[owner]


def _random_report(rng, ledger, engine_id, model_total, model_used, model_seq) -> None:
    total = model_total.get(engine_id, 10)
    used = rng.randint(0, total)
    free = total - used + (rng.choice([-1, 1]) if rng.random() < 0.1 else 0)
    last_seq = model_seq.get(engine_id)
    seq = rng.randint(0, (last_seq or 0) + 3)
    report = make_report(engine_id, used=used, free=max(free, 0), seq=seq)
    if engine_id not in model_total:
        assert ledger.report(report) is ReportOutcome.UNKNOWN_ENGINE
    elif last_seq is not None and seq <= last_seq:
        assert ledger.report(report) is ReportOutcome.STALE
    elif used + max(free, 0) != total:
        with pytest.raises(LedgerError):
            ledger.report(report)
    else:
        assert ledger.report(report) is ReportOutcome.ACCEPTED
        model_used[engine_id], model_seq[engine_id] = used, seq
