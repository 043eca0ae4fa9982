"""Drafters replayed under the engine's batch-1 rules (services/bench/spec_bound_engine.py)."""

from __future__ import annotations

import numpy as np
import pytest

from services.bench.spec_bound_engine import EngineRules, coefficients_from_costs, engine_drafter, engine_drafters
from services.bench.spec_bound_sim import CostScale, drafter_tally, oracle_run_lengths, oracle_tally, replay_all
from services.engine.spec.adaptive_drafting import AdaptiveDraftingConfig
from services.engine.spec.ngram_drafter import NgramConfig

COSTS = {k: 50.0 + 2.0 * k for k in range(1, 17)}
SCALE = CostScale.of([1.0] + [COSTS[k] / 50.0 for k in range(1, 17)])


def test_coefficients_from_costs():
    coefficients = coefficients_from_costs(50.0, COSTS)
    assert coefficients.base_s == pytest.approx(0.05) and coefficients.per_token_s == pytest.approx(0.002)


@pytest.mark.parametrize("seed", range(3))
def test_engine_rule_replays_stay_within_the_oracle(seed):
    tokens = np.random.default_rng(seed).integers(0, 5, 150)
    oracle = oracle_tally(oracle_run_lengths(tokens, 50, 1, 16), SCALE)
    for label, make in engine_drafters(coefficients_from_costs(50.0, COSTS)).items():
        tally = drafter_tally(tokens, 50, make(), SCALE)
        assert tally.num_tokens == oracle.num_tokens and tally.cost >= oracle.cost - 1e-9, label


def test_a_request_whose_drafts_fail_pauses_under_the_engine_rules():
    # a prompt that repeats "1 2 3 4" and an output whose "1 2" is never followed the same way twice
    prompt = [1, 2, 3, 4] * 10
    output = [token for i in range(16) for token in (1, 2, 100 + i, 200 + i)]
    tokens = np.array(prompt + output)
    rules = EngineRules(NgramConfig(num_unigram_drafts=0), 16, AdaptiveDraftingConfig(), True)
    free = NgramConfig(num_unigram_drafts=0)
    paused = drafter_tally(tokens, len(prompt), engine_drafter(rules, coefficients_from_costs(50.0, COSTS)), SCALE)
    always = drafter_tally(tokens, len(prompt), lambda context, last: free.propose(context, 16), SCALE)
    assert paused.num_accepted <= 1 and always.num_accepted <= 1  # only the first "4 1 -> 2" passes
    assert paused.num_verifies < always.num_verifies  # the tracker stopped it drafting for a while


def test_replay_all_takes_stateful_drafters_fresh_per_prompt():
    made = []

    def make():
        made.append(1)
        return lambda context, last: []

    generated = {"set": [("a", [1, 2, 1, 2], [1, 2, 1]), ("b", [3, 4, 3], [4, 3])]}
    result = replay_all(generated, {"s": SCALE}, stateful={"none": make})
    assert len(made) == 2 and result["sets"]["set"]["none"]["speedup"]["s"] == pytest.approx(1.0)
