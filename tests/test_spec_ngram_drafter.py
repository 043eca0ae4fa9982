"""N-gram prompt lookup: the longest matching suffix, its latest earlier occurrence, what followed it."""

from __future__ import annotations

import numpy as np
import pytest

from services.engine.spec.ngram_drafter import NgramConfig, propose_ngram_drafts


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
