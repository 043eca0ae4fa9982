"""N-gram prompt lookup: the longest matching suffix, its latest earlier occurrence, what followed it."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine.spec.ngram_drafter import (
    NgramConfig,
    matched_length,
    propose_ngram_drafts,
    propose_unigram_drafts,
    voted_unigram_match,
)


def _reference(tokens: list[int], min_n: int, max_n: int, num_drafts: int) -> list[int]:
    """The definition, by brute force over every n and every earlier window."""
    for n in range(max_n, min_n - 1, -1):
        if n >= len(tokens):
            continue
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):  # latest first; start len - n is the suffix itself
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + num_drafts]
    return []


def test_drafts_what_followed_the_latest_match_of_the_longest_suffix():
    #         0  1  2  3  4  5  6  7  8  9 10 11 12 13 14
    tokens = [5, 1, 2, 3, 9, 8, 7, 1, 2, 3, 4, 6, 0, 2, 3]
    # "0 2 3" and "6 0 2 3" never occurred before; "2 3" did at 2-3 (then 9 8 7) and 8-9 (then 4 6 0).
    assert propose_ngram_drafts(np.array(tokens), 2, 4, 3) == [4, 6, 0]
    tokens += [4]  # now "2 3 4" recurs at 8-10, followed by 6 0 2 3 and the new 4 itself
    assert propose_ngram_drafts(np.array(tokens), 2, 4, 5) == [6, 0, 2, 3, 4]
    assert propose_ngram_drafts(np.array(tokens), 2, 4, 2) == [6, 0]


def test_the_longest_n_wins_over_a_later_shorter_match():
    tokens = [7, 8, 9, 1, 2, 8, 9, 3, 4, 7, 8, 9]
    # "8 9" last occurred at 5-6 (then 3 4), but "7 8 9" occurred at 0-2 (then 1 2): longest first.
    assert propose_ngram_drafts(np.array(tokens), 2, 3, 2) == [1, 2]
    assert propose_ngram_drafts(np.array(tokens), 2, 2, 2) == [3, 4]


def test_no_match_or_too_short_gives_no_drafts():
    assert propose_ngram_drafts(np.array([1, 2, 3, 4, 5]), 1, 3, 4) == []
    assert propose_ngram_drafts(np.array([1, 2, 1]), 2, 3, 4) == []  # only unigram "1" recurs
    assert propose_ngram_drafts(np.array([1, 2, 1]), 1, 3, 4) == [2, 1]
    assert propose_ngram_drafts(np.array([3]), 1, 1, 4) == []
    assert propose_ngram_drafts(np.array([], dtype=np.int64), 1, 1, 4) == []
    assert propose_ngram_drafts(np.array([1, 2, 1, 2]), 1, 2, 0) == []


def test_a_repeating_pattern_drafts_its_continuation_from_an_overlapping_match():
    assert propose_ngram_drafts(np.array([4, 4, 4, 4]), 2, 2, 3) == [4]  # latest "4 4" at 1-2, then 4
    assert propose_ngram_drafts(np.array([1, 2, 1, 2, 1, 2]), 2, 4, 5) == [1, 2]


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_brute_force_definition(seed):
    generator = np.random.default_rng(seed)
    vocab = int(generator.integers(2, 6))
    tokens = generator.integers(0, vocab, size=int(generator.integers(1, 60))).tolist()
    min_n = int(generator.integers(1, 4))
    max_n = min_n + int(generator.integers(0, 4))
    num_drafts = int(generator.integers(1, 8))
    expected = _reference(tokens, min_n, max_n, num_drafts)
    assert propose_ngram_drafts(np.array(tokens, dtype=np.int64), min_n, max_n, num_drafts) == expected


def test_invalid_arguments_and_config():
    with pytest.raises(ValueError):
        propose_ngram_drafts(np.array([1, 2]), 0, 2, 3)
    with pytest.raises(ValueError):
        propose_ngram_drafts(np.array([1, 2]), 3, 2, 3)
    with pytest.raises(ValueError):
        propose_ngram_drafts(np.zeros((2, 2), dtype=np.int64), 1, 2, 3)
    assert NgramConfig().min_n >= 1 and NgramConfig().max_n >= NgramConfig().min_n
    with pytest.raises(ValueError):
        NgramConfig(min_n=0)
    with pytest.raises(ValueError):
        NgramConfig(min_n=3, max_n=2)


def test_a_short_match_drafts_fewer_tokens_than_a_long_one():
    copy = list(range(10, 40))
    # "... 10..19" then again "10..19": the match runs 10 tokens back, so 2 x 10 = 20 drafts are allowed
    long_match = np.array(copy + [1] + copy[:10])
    assert propose_ngram_drafts(long_match, 2, 4, 16, 2) == copy[10:26]
    # only "20 21" recurs (after a different token): a 2-token match drafts 2 x 2 = 4 of the 16 granted
    short_match = np.array(copy + [1, 20, 21])
    assert propose_ngram_drafts(short_match, 2, 4, 16, 2) == copy[12:16]
    assert propose_ngram_drafts(short_match, 2, 4, 16, 0) == copy[12:28]  # 0: no length rule
    assert propose_ngram_drafts(short_match, 2, 4, 3, 2) == copy[12:15]  # never more than granted
    assert matched_length(long_match, 9) == 10  # "10..19" ends at index 9


def test_the_length_rule_changes_nothing_at_k_4(seed_count=30):
    for seed in range(seed_count):
        tokens = np.random.default_rng(seed).integers(0, 4, 80)
        assert propose_ngram_drafts(tokens, 2, 4, 4, 2) == propose_ngram_drafts(tokens, 2, 4, 4)


def test_ngram_config_rejects_a_negative_length_rule():
    with pytest.raises(ValueError):
        NgramConfig(drafts_per_matched_token=-1)


def _periodic_reference(tokens: list[int], min_n: int, max_n: int, num_drafts: int) -> list[int]:
    """copy_past_end by definition: the brute-force match, its continuation read from tokens + drafts."""
    for n in range(max_n, min_n - 1, -1):
        if n >= len(tokens):
            continue
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tokens[-n:]:
                sequence = list(tokens)
                while len(sequence) < len(tokens) + num_drafts:
                    sequence.append(sequence[start + n + len(sequence) - len(tokens)])
                return sequence[len(tokens) :]
    return []


def test_copy_past_end_drafts_a_loop_to_the_full_k():
    tokens = np.array([9, 1, 2, 1, 2])  # latest "1 2" ends 2 back: period 2
    assert propose_ngram_drafts(tokens, 2, 4, 5) == [1, 2]  # stops at the end
    assert propose_ngram_drafts(tokens, 2, 4, 5, copy_past_end=True) == [1, 2, 1, 2, 1]
    assert propose_ngram_drafts(np.array([4, 4, 4, 4]), 2, 2, 3, copy_past_end=True) == [4, 4, 4]


@pytest.mark.parametrize("seed", range(30))
def test_copy_past_end_matches_its_brute_force_definition(seed):
    generator = np.random.default_rng(100 + seed)
    tokens = generator.integers(0, int(generator.integers(2, 5)), size=int(generator.integers(2, 40))).tolist()
    num_drafts = int(generator.integers(1, 10))
    expected = _periodic_reference(tokens, 2, 4, num_drafts)
    assert propose_ngram_drafts(np.array(tokens), 2, 4, num_drafts, copy_past_end=True) == expected


def test_unigram_fallback_drafts_the_voted_continuation():
    # no 2-gram recurs; "7" occurred 3 times before, followed by 1, 2, 1: "1" has 2 of 3 votes
    tokens = np.array([7, 1, 5, 7, 2, 6, 7, 1, 8, 7])
    assert voted_unigram_match(tokens, 0.5) == 6  # the latest "7" followed by the winner
    assert propose_unigram_drafts(tokens, 2, 0.5) == [1, 8]
    assert propose_unigram_drafts(tokens, 2, 0.7) == []  # 2/3 < 0.7: no draft
    # a tie goes to the continuation seen latest: "3" followed by 4 and 5 once each
    assert propose_unigram_drafts(np.array([3, 4, 3, 5, 3]), 1, 0.5) == [5]
    assert propose_unigram_drafts(np.array([1, 2, 3]), 2, 0.0) == []  # "3" never occurred before
    assert propose_unigram_drafts(np.array([3, 4, 3]), 0, 0.0) == []


def test_config_propose_prefers_the_ngram_then_falls_back_to_the_unigram():
    config = NgramConfig()
    assert config.drafts_per_matched_token == 2 and config.num_unigram_drafts == 2 and config.copy_past_end
    copy = list(range(10, 30))
    tokens = np.array(copy + [1] + copy[:3])  # "10 11 12" recurs: 2 x 3 = 6 drafts of its continuation
    assert config.propose(tokens, 16) == copy[3:9]
    assert config.propose(tokens, 4) == copy[3:7]
    only_unigram = np.array([7, 1, 5, 7, 2, 6, 7, 1, 8, 7])
    assert config.propose(only_unigram, 16) == [1, 8]  # at most num_unigram_drafts
    assert config.propose(only_unigram, 1) == [1]
    assert NgramConfig(num_unigram_drafts=0).propose(only_unigram, 16) == []
    assert config.propose(tokens, 0) == [] and config.source(tokens, 0) == (-1, 0)
    assert config.source(tokens, 16) == (2, 6)


def test_ngram_config_rejects_bad_fallback_settings():
    with pytest.raises(ValueError):
        NgramConfig(num_unigram_drafts=-1)
    with pytest.raises(ValueError):
        NgramConfig(min_unigram_share=1.5)
