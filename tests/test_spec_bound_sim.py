"""The prompt-lookup bound (services/bench/spec_bound_sim.py): oracle run lengths, the cheapest schedule,
drafter replay, and the claim that makes it a bound: no drafter replayed beats the oracle."""

from __future__ import annotations

import numpy as np
import pytest

from services.bench.spec_bound_sim import (
    CostScale,
    drafter_tally,
    drafters,
    ngram,
    oracle_run_lengths,
    oracle_tally,
)

FLAT = CostScale.of([1.0] * 17)  # verifies as cheap as decodes: speedup = tokens per step


def test_oracle_run_lengths_copy_from_the_context_only():
    # prompt "5 1 2 3 9", output "1 2 3 9 7": after "... 9 | 1" the earlier "1 2 3 9" is copied.
    tokens = np.array([5, 1, 2, 3, 9, 1, 2, 3, 9, 7])
    runs = oracle_run_lengths(tokens, 5, 1, 16)
    # t=0 predicts out[0]=1 after last token 9: 9 never occurred earlier -> 0.
    # t=1 predicts "2 3 9 7" after "1": earlier "1" is followed by "2 3 9 1" -> 3 match ("2 3 9").
    # t=4 predicts "7" after "9": the earlier 9 is followed by 1 -> 0.
    assert runs.tolist() == [0, 3, 2, 1, 0]
    assert oracle_run_lengths(tokens, 5, 2, 16).tolist() == [0, 0, 2, 1, 0]  # n >= 2: "9 1" never recurs
    assert oracle_run_lengths(tokens, 5, 1, 2).tolist() == [0, 2, 2, 1, 0]  # cap


def test_oracle_schedule_is_the_cheapest_path():
    runs = np.array([0, 3, 2, 1, 0])
    flat = oracle_tally(runs, FLAT)
    assert (flat.num_tokens, flat.num_steps, flat.num_accepted) == (4, 1, 3)  # one verify of 3 drafts
    steep = oracle_tally(runs, CostScale.of([1.0, 1.9, 3.0, 4.0]))  # a draft costs almost a step
    # 1 draft at t=1 (1.9 for 2 tokens), 1 draft at t=3 (R=1): 3.8 < 3 drafts at t=1 (4.0) + a step (1.0)
    assert steep.cost == pytest.approx(3.8)
    assert (steep.num_tokens, steep.num_verifies, steep.num_accepted) == (4, 2, 2)


def test_oracle_counts_noisy_costs_as_the_cheapest_longer_verify():
    scale = CostScale.of([1.0, 1.5, 1.2])  # cost(2) < cost(1): accepting 1 draft can cost 1.2
    tally = oracle_tally(np.array([0, 1, 0]), scale)
    assert tally.cost == pytest.approx(1.2) and tally.num_drafted == 2 and tally.num_accepted == 1


def test_drafter_replay_counts_steps_and_acceptance():
    tokens = np.array([5, 1, 2, 3, 9, 1, 2, 3, 9, 7])
    tally = drafter_tally(tokens, 5, ngram(1, 4, 4), FLAT)
    # t=1: "1" at index 1 -> drafts "2 3 9 1" cut to the 3 the output has left, all accepted: 4 tokens.
    assert (tally.num_tokens, tally.num_steps, tally.num_drafted, tally.num_accepted) == (4, 1, 3, 3)
    longer = np.array([5, 1, 2, 3, 9, 1, 2, 3, 4, 7, 7])
    tally = drafter_tally(longer, 5, ngram(1, 4, 4), FLAT)  # drafts "2 3 9 1": 2 accepted, then 3 plain steps
    assert (tally.num_tokens, tally.num_steps, tally.num_drafted, tally.num_accepted) == (5, 3, 4, 2)
    assert tally.figures()["acceptance_rate"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(6))
def test_no_drafter_beats_the_oracle(seed):
    rng = np.random.default_rng(seed)
    scale = CostScale.of(np.concatenate([[1.0], 1.0 + rng.uniform(0.02, 0.2, 16).cumsum() * rng.uniform(0.5, 1.5)]))
    tokens = rng.integers(0, 6, 160)  # small vocabulary: many repeats
    oracle = oracle_tally(oracle_run_lengths(tokens, 60, 1, 16), scale)
    for label, drafter in drafters().items():
        replay = drafter_tally(tokens, 60, drafter, scale)
        assert replay.num_tokens == oracle.num_tokens == 99
        assert replay.cost >= oracle.cost - 1e-9, label


def test_cost_scale_rejects_ratios_not_starting_at_one():
    with pytest.raises(ValueError):
        CostScale.of([1.2, 1.3])
