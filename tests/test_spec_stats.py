"""Speculative-decoding counters: totals, rates and their edge cases."""

from __future__ import annotations

import threading

import pytest

from services.engine.spec.spec_stats import SpecStats


def test_figures_follow_the_recorded_steps():
    stats = SpecStats()
    assert stats.acceptance_rate == 0.0 and stats.mean_accepted_length == 0.0
    assert stats.snapshot().mean_tokens_per_verify == 0.0
    stats.record_step(num_drafted=8, num_accepted=6, num_verifying_requests=2)
    stats.record_step(num_drafted=4, num_accepted=0, num_verifying_requests=1)
    stats.record_step(num_drafted=0, num_accepted=0, num_verifying_requests=0)  # a step without drafts
    snapshot = stats.snapshot()
    assert (snapshot.num_draft_tokens, snapshot.num_accepted_tokens) == (12, 6)
    assert (snapshot.num_verify_steps, snapshot.num_request_verifies) == (2, 3)
    assert stats.num_draft_tokens == 12 and stats.num_accepted_tokens == 6 and stats.num_verify_steps == 2
    assert stats.acceptance_rate == pytest.approx(0.5)
    assert stats.mean_accepted_length == pytest.approx(2.0)
    assert snapshot.mean_tokens_per_verify == pytest.approx(3.0)


def test_a_request_verifying_no_draft_still_counts_as_a_verify():
    stats = SpecStats()  # e.g. a request that drafted nothing this step next to one that drafted
    stats.record_step(num_drafted=0, num_accepted=0, num_verifying_requests=1)
    assert stats.snapshot().num_request_verifies == 1 and stats.acceptance_rate == 0.0


@pytest.mark.parametrize("drafted, accepted, requests", [(2, 3, 1), (-1, 0, 1), (2, -1, 1), (2, 1, -1), (3, 1, 0)])
def test_impossible_steps_are_value_errors(drafted, accepted, requests):
    with pytest.raises(ValueError):
        SpecStats().record_step(drafted, accepted, requests)


def test_snapshots_stay_consistent_while_the_engine_thread_records():
    stats = SpecStats()

    def engine() -> None:
        for _ in range(20_000):
            stats.record_step(4, 2, 1)

    thread = threading.Thread(target=engine)
    thread.start()
    while thread.is_alive():
        snapshot = stats.snapshot()
        assert snapshot.num_draft_tokens == 2 * snapshot.num_accepted_tokens == 4 * snapshot.num_verify_steps
    thread.join()
    assert stats.snapshot().num_verify_steps == 20_000
