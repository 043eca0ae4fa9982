"""Where a drafter loses against the prompt-lookup oracle (services/bench/spec_bound_loss.py): step
categories on hand-made outputs, and oracle-assisted replays that stay within the oracle's bound."""

from __future__ import annotations

import numpy as np
import pytest

from services.bench.spec_bound_loss import (
    FIX_SETS,
    OracleFix,
    StepLoss,
    agreeing_run,
    assisted_drafter,
    loss_report,
    step_losses,
)
from services.bench.spec_bound_sim import CostScale, drafter_tally, oracle_run_lengths, oracle_tally
from services.engine.spec.ngram_drafter import NgramConfig

FLAT = CostScale.of([1.0] * 17)
PLAIN = NgramConfig(copy_past_end=False, num_unigram_drafts=0, drafts_per_matched_token=0)


def _losses(tokens, prompt_len, config=PLAIN, num_drafts=4):
    found = step_losses(np.array(tokens), prompt_len, config, num_drafts)
    return {loss: values for loss, values in found.items() if values[0]}


def test_a_copy_cut_short_by_k_is_cut_at_k():
    copy = [10, 11, 12, 13, 14, 15, 16, 17]
    tokens = [1] + copy + [2] + copy[:2] + copy[2:8]  # prompt: 1 copy 2 10 11 | output 12..17
    prompt_len = 1 + len(copy) + 3
    found = _losses(tokens, prompt_len, num_drafts=2)
    # t=0 ("12") is the prefill's token; t=1 drafts "13 14", 2 of the 5 the copy still offers: cut at k
    assert found[StepLoss.CUT_AT_K][0] >= 1
    assert StepLoss.WRONG_OCCURRENCE not in found
    assert agreeing_run(np.array(tokens), prompt_len + 1, 3, False) == 5  # "12" at index 3 -> 13 .. 17


def test_the_latest_occurrence_with_the_wrong_continuation_is_a_wrong_occurrence():
    # "7 8" is followed by 1 2 3 early and by 5 later; the output goes on with 1 2 3
    tokens = [9, 7, 8, 1, 2, 3, 4, 7, 8, 5, 6, 0, 7, 8, 1, 2, 3, 4]
    found = _losses(tokens, 13)  # output starts at index 13 (the "8" of the last "7 8")
    assert found[StepLoss.WRONG_OCCURRENCE][0] == 1
    draft = assisted_drafter(np.array(tokens), PLAIN, 4, frozenset({OracleFix.BEST_OCCURRENCE}))
    assert draft(np.array(tokens[:14]), (0, 0)) == [1, 2, 3, 4]  # the early occurrence


def test_no_draft_where_only_a_unigram_would_hit():
    tokens = [5, 6, 1, 9, 3, 5, 6]  # output "3 5 6" after prompt "5 6 1 9": "3" never recurs, "5" -> 6
    found = _losses(tokens, 4)
    assert StepLoss.NO_DRAFT in found or StepLoss.NOTHING_TO_DRAFT in found
    draft = assisted_drafter(np.array(tokens), PLAIN, 4, frozenset({OracleFix.ORACLE_UNIGRAM}))
    assert draft(np.array(tokens[:6]), (0, 0)) == [6]  # "5" -> 6 drafted with the oracle's length


@pytest.mark.parametrize("seed", range(4))
def test_assisted_replays_never_beat_the_oracle(seed):
    rng = np.random.default_rng(seed)
    scale = CostScale.of(np.concatenate([[1.0], 1.0 + np.cumsum(rng.uniform(0.01, 0.1, 16))]))
    tokens = rng.integers(0, 5, 140)
    oracle = oracle_tally(oracle_run_lengths(tokens, 50, 1, 16), scale)
    for config in (NgramConfig(), PLAIN):
        for fixes in FIX_SETS.values():
            tally = drafter_tally(tokens, 50, assisted_drafter(tokens, config, 16, fixes), scale)
            assert tally.num_tokens == oracle.num_tokens
            assert tally.cost >= oracle.cost - 1e-9, (config, fixes)


def test_the_report_counts_every_decode_step_once():
    rng = np.random.default_rng(7)
    rows = [("a", rng.integers(0, 6, 40).tolist(), rng.integers(0, 6, 30).tolist())]
    report = loss_report(rows, {"plain": (PLAIN, 4)}, FLAT)["plain"]
    replay = drafter_tally(np.array(rows[0][1] + rows[0][2]), 40, assisted_drafter(np.array(rows[0][1] + rows[0][2]),
                           PLAIN, 4, frozenset()), FLAT)  # fmt: skip
    assert sum(row["steps"] for row in report["steps"].values()) == replay.num_steps
    assert report["speedup"]["as is"] == pytest.approx(replay.figures()["speedup"])
    assert set(report["speedup"]) == set(FIX_SETS)
