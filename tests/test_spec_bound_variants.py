"""Drafter variants replayed on cached outputs (services/bench/spec_bound_variants.py)."""

from __future__ import annotations

import numpy as np
import pytest

from services.bench.spec_bound_engine import EngineRules, coefficients_from_costs, engine_drafter
from services.bench.spec_bound_sim import CostScale, drafter_tally, oracle_run_lengths, oracle_tally
from services.bench.spec_bound_variants import CopyPointer, drafters_of, sentence_stop
from services.engine.spec.adaptive_drafting import AdaptiveDraftingConfig
from services.engine.spec.ngram_drafter import NgramConfig

COSTS = {k: 50.0 + 2.0 * k for k in range(1, 17)}
SCALE = CostScale.of([1.0] + [COSTS[k] / 50.0 for k in range(1, 17)])
# "1 .. 8" then a later "3 4 5 6" followed by 30: the latest occurrence of the last 4 tokens is not the copy
PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 20, 3, 4, 5, 6, 30]


def test_the_pointer_follows_the_running_copy_where_the_latest_match_jumps_elsewhere():
    config = NgramConfig(num_unigram_drafts=0)
    pointer = CopyPointer(config)
    drafts, matched = pointer(np.array(PROMPT + [1, 2]), 4)
    assert drafts == [3, 4, 5, 6] and matched
    context = np.array(PROMPT + [1, 2, 3, 4, 5, 6])  # every draft accepted, then the model's own 6
    assert config.propose(context, 2) == [30, 1]  # the latest "3 4 5 6" continues with 30
    assert pointer(context, 2) == ([7, 8], True)  # the running copy (6 tokens matched) goes on


def test_the_resync_looks_for_the_last_token_just_after_the_broken_copy():
    config = NgramConfig(num_unigram_drafts=0)
    prompt = [9, 1, 2, 3, 4, 5, 6, 7, 8, 40, 9, 50]
    resync = CopyPointer(config, follow=False, window=4, resync_drafts=2)
    assert resync(np.array(prompt + [1, 2]), 2) == ([3, 4], True)
    # the model skipped "3 4" and wrote 5 6, which no 2-gram matches: resync finds 5 within 4 tokens of "3"
    context = np.array(prompt + [1, 2, 5])
    assert config.propose(context, 2) == []
    assert resync(context, 2) == ([6, 7], False)
    assert CopyPointer(config)(context, 2) == ([], False)  # no resync without a running copy


def test_sentence_stop_ends_drafts_after_a_stop_token():
    context = np.array([1, 2, 3, 99, 4, 5, 1, 2])
    assert NgramConfig().propose(context, 4) == [3, 99, 4, 5]
    assert sentence_stop(NgramConfig(), {99})(context, 4) == ([3, 99], True)


def test_the_engine_rules_tell_a_custom_proposer_of_every_step():
    calls = []

    def propose(context, num_drafts):
        calls.append(num_drafts)
        return [], False

    tokens = np.arange(40) % 7
    rules = EngineRules(NgramConfig(), 16, AdaptiveDraftingConfig(), False)
    drafter_tally(tokens, 10, engine_drafter(rules, coefficients_from_costs(50.0, COSTS), propose), SCALE)
    assert len(calls) == 29  # every decode step (positions 1 .. 29), none drafted


@pytest.mark.parametrize("seed", range(3))
def test_every_variant_replay_stays_within_the_oracle(seed):
    tokens = np.random.default_rng(seed).integers(0, 5, 150)
    oracle = oracle_tally(oracle_run_lengths(tokens, 50, 1, 16), SCALE)
    for label, make in drafters_of(coefficients_from_costs(50.0, COSTS), {3}).items():
        tally = drafter_tally(tokens, 50, make(), SCALE)
        assert tally.num_tokens == oracle.num_tokens and tally.cost >= oracle.cost - 1e-9, label
