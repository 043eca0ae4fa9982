"""Adaptive drafting: failing requests pause with a doubling backoff; batches draft only where it pays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.engine.scheduler.cost_model import DEFAULT_PRIOR, StepCostCoefficients
from services.engine.spec.adaptive_drafting import AcceptanceTracker, AdaptiveDraftingConfig, batch_num_drafts

CONFIG = AdaptiveDraftingConfig(
    min_acceptance_rate=0.3, min_verifies=3, ema_weight=0.5, initial_backoff_steps=4, max_backoff_steps=16
)


def _step(tracker: AcceptanceTracker, request_id: str, num_accepted: int, max_drafts: int = 4) -> int:
    """One scheduling step of a request: asks how many drafts, verifies them, records the outcome."""
    k = tracker.num_drafts(request_id, max_drafts)
    tracker.record(request_id, k, min(num_accepted, k))
    return k


def _run_until_drafting(tracker: AcceptanceTracker, request_id: str) -> int:
    """Steps without drafts before the request drafts again (it drafts, with 0 accepted, at the end)."""
    for paused in itertools.count():
        if _step(tracker, request_id, 0):
            return paused
    raise AssertionError("unreachable")


def test_a_request_whose_drafts_keep_failing_pauses_with_a_doubling_backoff():
    tracker = AcceptanceTracker(CONFIG)
    assert [_step(tracker, "r", 0) for _ in range(3)] == [4, 4, 4]  # judged after min_verifies verifies
    pauses = []
    for _ in range(5):
        pauses.append(_run_until_drafting(tracker, "r"))
        assert [_step(tracker, "r", 0) for _ in range(2)] == [4, 4]  # the probe: 3 verifies, failing again
    assert pauses == [4, 8, 16, 16, 16]


def test_a_passing_probe_resumes_drafting_and_resets_the_backoff():
    tracker = AcceptanceTracker(CONFIG)
    for _ in range(3):
        _step(tracker, "r", 0)
    assert _run_until_drafting(tracker, "r") == 4
    for _ in range(2):
        _step(tracker, "r", 0)
    assert _run_until_drafting(tracker, "r") == 8  # the first probe failed: doubled
    assert [_step(tracker, "r", 3) for _ in range(10)] == [4] * 10  # the second probe passes: keeps drafting
    assert tracker.acceptance_rate("r") == pytest.approx(0.75, abs=1e-3)  # 3 successes, 1 failure per verify
    num_failing = next(i for i in itertools.count() if _step(tracker, "r", 0) == 0)
    assert num_failing == 3  # the estimate (weight 0.5) falls from 0.75 below 0.3 in 3 failing verifies
    assert 1 + _run_until_drafting(tracker, "r") == 4  # failing later starts from the initial backoff again


def test_good_drafts_never_pause_and_rates_count_trials_not_drafts():
    tracker = AcceptanceTracker(CONFIG)
    assert [_step(tracker, "good", 4) for _ in range(50)] == [4] * 50
    assert tracker.acceptance_rate("good") == 1.0  # every draft accepted: no failure observed
    assert tracker.totals("good") == (200, 200)
    tracker.record("half", 4, 1)  # one success, then one failure; the last two drafts were never tested
    assert tracker.acceptance_rate("half") == 0.5
    tracker.record("none", 3, 0)
    assert tracker.acceptance_rate("none") == 0.0
    assert tracker.acceptance_rate("unknown") is None and tracker.totals("unknown") == (0, 0)


def test_the_estimate_follows_recent_verifies():
    tracker = AcceptanceTracker(AdaptiveDraftingConfig(min_acceptance_rate=0.0, ema_weight=0.25))
    for _ in range(30):
        tracker.record("r", 4, 4)
    for _ in range(30):
        tracker.record("r", 4, 1)
    assert tracker.acceptance_rate("r") == pytest.approx(0.5, abs=0.01)
    assert tracker.totals("r") == (240, 150)


def test_verifies_without_drafts_change_nothing_and_forget_drops_the_request():
    tracker = AcceptanceTracker(CONFIG)
    for _ in range(10):
        tracker.record("r", 0, 0)
    assert tracker.acceptance_rate("r") is None and tracker.num_drafts("r", 4) == 4
    assert len(tracker) == 1
    tracker.forget("r")
    tracker.forget("never-seen")
    assert len(tracker) == 0
    with pytest.raises(ValueError):
        tracker.record("r", 2, 3)
    with pytest.raises(ValueError):
        tracker.record("r", 2, -1)


def test_the_batch_rate_pools_drafting_requests_and_starts_from_the_prior():
    tracker = AcceptanceTracker(CONFIG)
    assert tracker.batch_acceptance_rate() == CONFIG.prior_acceptance_rate  # nothing measured yet
    tracker.num_drafts("new", 4)  # tracked, no estimate: left out of the pool
    tracker.record("a", 4, 4)  # 4 successes, 0 failures
    tracker.record("b", 4, 0)  # 0 successes, 1 failure
    prior, weight = CONFIG.prior_acceptance_rate, CONFIG.prior_weight_trials
    assert tracker.batch_acceptance_rate() == pytest.approx((4 + prior * weight) / (5 + weight))
    # one rejected verify pools above 0 (at 0, batch_num_drafts would stop drafting for good)
    assert tracker.batch_acceptance_rate(["b", "new", "unknown"]) == pytest.approx(prior * weight / (1 + weight))
    assert 0.0 < tracker.batch_acceptance_rate(["b"]) < prior
    assert tracker.batch_acceptance_rate(["new"]) == CONFIG.prior_acceptance_rate
    for _ in range(2):
        tracker.record("b", 4, 0)  # judged after 3 verifies: paused, so out of the pool
    assert tracker.num_drafts("b", 4) == 0
    assert tracker.batch_acceptance_rate() == pytest.approx((4 + prior * weight) / (4 + weight))
    tracker.forget("a")
    assert tracker.batch_acceptance_rate() == CONFIG.prior_acceptance_rate


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_acceptance_rate": 1.5},
        {"prior_acceptance_rate": -0.1},
        {"prior_weight_trials": -1.0},
        {"min_verifies": 0},
        {"ema_weight": 0.0},
        {"initial_backoff_steps": 0},
        {"initial_backoff_steps": 64, "max_backoff_steps": 8},
    ],
)
def test_invalid_config_is_a_value_error(kwargs):
    with pytest.raises(ValueError):
        AdaptiveDraftingConfig(**kwargs)


def _expected_rate(num_decodes, rate, k, coefficients):
    tokens = num_decodes * sum(rate**i for i in range(k + 1))
    return tokens / coefficients.step_time_s(num_decodes * (1 + k), 0)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("num_decodes", [1, 4, 16, 64, 256])
def test_the_batch_k_maximises_expected_tokens_per_second(rate, num_decodes):
    k = batch_num_drafts(num_decodes, rate, 6, DEFAULT_PRIOR)
    best = max(_expected_rate(num_decodes, rate, j, DEFAULT_PRIOR) for j in range(7))
    assert _expected_rate(num_decodes, rate, k, DEFAULT_PRIOR) == pytest.approx(best, rel=1e-12)


def test_drafting_turns_down_as_the_batch_becomes_compute_bound():
    coefficients = StepCostCoefficients(base_s=0.010, per_token_s=2e-4, per_kv_token_s=0.0)
    ks = [batch_num_drafts(n, 0.7, 8, coefficients) for n in (1, 8, 32, 128, 512)]
    assert ks[0] == 8  # batch 1: a step is mostly its fixed cost, drafts are nearly free
    assert ks == sorted(ks, reverse=True) and ks[-1] == 0  # 512 decodes: each draft costs a full token
    assert batch_num_drafts(4, 0.0, 8, coefficients) == 0  # drafts that never pass are never worth it
    free = StepCostCoefficients(base_s=0.010, per_token_s=0.0, per_kv_token_s=0.0)
    assert batch_num_drafts(512, 0.1, 8, free) == 8
    # A prefill chunk in the same step raises its fixed cost: drafting pays at a larger batch.
    assert batch_num_drafts(32, 0.7, 8, coefficients, num_other_tokens=2000) > ks[2]


def test_per_request_rates_weigh_each_request():
    coefficients = StepCostCoefficients(base_s=0.010, per_token_s=2e-4, per_kv_token_s=1e-7)
    rates = np.array([0.9, 0.9, 0.0, 0.0])
    k = batch_num_drafts(4, rates, 5, coefficients, num_kv_tokens_read=4000)
    tokens = [2 * sum(0.9**i for i in range(j + 1)) + 2 for j in range(6)]
    per_s = [tokens[j] / coefficients.step_time_s(4 * (1 + j), 4000) for j in range(6)]
    assert k == int(np.argmax(per_s))
    with pytest.raises(ValueError):
        batch_num_drafts(3, rates, 5, coefficients)
    with pytest.raises(ValueError):
        batch_num_drafts(-1, 0.5, 5, coefficients)
    assert batch_num_drafts(0, 0.5, 5, coefficients) == 0 and batch_num_drafts(4, 0.5, 0, coefficients) == 0


def test_the_two_rate_model_counts_first_drafts_and_later_drafts_apart():
    tracker = AcceptanceTracker(CONFIG)
    prior, weight = CONFIG.prior_acceptance_rate, CONFIG.prior_weight_trials
    assert tracker.batch_acceptance_model() == (prior, prior)  # nothing measured yet
    tracker.record("copy", 8, 8)  # first accepted; 7 later successes, no failure
    tracker.record("miss", 8, 0)  # first rejected; no later trials
    tracker.record("part", 4, 2)  # first accepted; 1 later success, 1 later failure
    first, later = tracker.batch_acceptance_model()
    assert first == pytest.approx((2 + prior * weight) / (3 + weight))
    assert later == pytest.approx((8 + prior * weight) / (9 + weight))
    # the one-rate estimate pools the same verifies as (2 + 8) successes in (2 + 8 + 2) trials
    assert tracker.batch_acceptance_rate() == pytest.approx((10 + prior * weight) / (12 + weight))
    assert tracker.batch_acceptance_model(["miss"]) == pytest.approx((prior * weight / (1 + weight), prior))


def test_a_high_continuation_rate_lengthens_the_batch_k():
    coefficients = StepCostCoefficients(base_s=0.010, per_token_s=4e-4, per_kv_token_s=0.0)
    # equal rates: the same k as the one-rate (independent) model
    for rate in (0.2, 0.5, 0.8):
        one_rate = batch_num_drafts(1, rate, 16, coefficients)
        assert batch_num_drafts(1, rate, 16, coefficients, continuation_rate=rate) == one_rate
    # prompt lookup: a draft that starts right is a copy in progress (a1 0.45, c 0.85): k far above the
    # pooled rate's (~0.5), which caps the copy at a few tokens
    pooled = batch_num_drafts(1, 0.5, 16, coefficients)
    two_rate = batch_num_drafts(1, 0.45, 16, coefficients, continuation_rate=0.85)
    assert pooled <= 4 < 10 <= two_rate
    tokens = [1 + 0.45 * sum(0.85**i for i in range(j)) for j in range(17)]
    per_s = [tokens[j] / coefficients.step_time_s(1 + j, 0) for j in range(17)]
    assert two_rate == int(np.argmax(per_s))
    with pytest.raises(ValueError):
        batch_num_drafts(2, 0.5, 4, coefficients, continuation_rate=[0.5, 0.5, 0.5])


def test_a_request_s_own_acceptance_is_shrunk_toward_the_batch_s():
    tracker = AcceptanceTracker(AdaptiveDraftingConfig(min_verifies=100, prior_weight_trials=2.0, ema_weight=0.25))
    for _ in range(8):
        tracker.record("copy", 8, 8)  # every draft accepted: a1 1, c 1
    tracker.record("new", 4, 0)  # one verify, first draft rejected
    first, later = tracker.request_acceptance_models(["copy", "new", "unknown"], pooled=(0.5, 0.5))
    # copy: 4 verifies' worth of its own (the EMA's reach) against 2 of the pool's
    assert first[0] == pytest.approx((4 * 1.0 + 2 * 0.5) / 6) and later[0] == pytest.approx(
        (4 * 7 + 2 * 0.5) / (4 * 7 + 2)
    )
    assert first[1] == pytest.approx((1 * 0.0 + 2 * 0.5) / 3) and later[1] == pytest.approx(0.5)  # no later trials
    assert (first[2], later[2]) == (0.5, 0.5)  # no estimate: the pool's
