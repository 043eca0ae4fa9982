"""N-gram prompt lookup: drafts are the tokens that followed the latest earlier match of the last n tokens.

For n from max_n down to min_n, the request's own tokens (prompt + output) are searched for an
earlier occurrence of their last n tokens; the first n that matches wins, its latest occurrence is
used, and the (up to num_drafts) tokens that followed it are the drafts:

    tokens:   ... a b c x y ... a b c | (next?)          last n = 3 tokens "a b c"
                  ^^^^^ latest earlier occurrence (it ends before the suffix's own last token)
    drafts:   x y ...                                    (fewer when the match is near the end)

A window that overlaps the suffix counts (in "a a a a" the suffix "a a" matches at the third token),
so a repeating pattern drafts its continuation. Drafting is deterministic: no distribution, the
verifier treats drafts as point masses (verification.py).

Cost (runs on the host per drafting request per step): one vectorised comparison of the whole
context with its last token, then one comparison per further n over the surviving candidates only.
Measured (timeit, best of 5, one core of the 2-core dev machine, n 4..2, 4 drafts) on ShareGPT text
in SmolLM2 tokens: median 9 us at 1k tokens, 22 us at 8k; worst case, 8k copies of one token (every
position a candidate at every n): 0.3 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NgramConfig:
    """--ngram-min / --ngram-max: the n-gram lengths tried, longest first.

    Defaults: vLLM sets prompt_lookup_min = prompt_lookup_max = 5 ("arbitrarily chosen") when neither
    is given; Hugging Face's prompt lookup tries 2 then 1, the original prompt-lookup decoding 3 to 1.
    Measured here on 200 ShareGPT first turns (the reply's own next tokens standing in for the
    model's, 4 drafts): n 4..2 drafts at 37% of steps with 35% of drafts accepted (1.53 tokens per
    step); adding n = 1 drafts at 69% of steps but its extra drafts are accepted only 8.5% of the time
    (1.63 tokens per step for 1.8x the draft tokens); 5..5 drafts at 13% of steps (1.27). So 4..2:
    almost all of the gain without paying verify work for unigram noise.
    """

    min_n: int = 2  # shortest suffix matched, tokens
    max_n: int = 4  # longest suffix matched, tokens; tried first
    # A match of m tokens (the suffix extended back as far as it agrees, up to MAX_MATCH_TOKENS) drafts at
    # most this many tokens per matched token; 0 = always the k granted. A long match is a copy in
    # progress and tends to go on, a 2-token match rarely: replayed on off's greedy outputs of SmolLM2
    # (docs/benchmarks/spec/spec_bound.json), k = 16 with 2 per matched token beats a fixed k = 4 or 16
    # on all three prompt sets. With min_n = 2 and k <= 4 it changes nothing (2 m >= 4).
    drafts_per_matched_token: int = 2

    def __post_init__(self) -> None:
        if self.min_n < 1:
            raise ValueError(f"ngram min_n must be >= 1, got {self.min_n}")
        if self.max_n < self.min_n:
            raise ValueError(f"ngram max_n ({self.max_n}) must be >= min_n ({self.min_n})")
        if self.drafts_per_matched_token < 0:
            raise ValueError(f"drafts_per_matched_token must be >= 0, got {self.drafts_per_matched_token}")


MAX_MATCH_TOKENS = 64  # how far back a match's length is counted (it only caps k, at most 16)


def matched_length(tokens: np.ndarray, end: int, limit: int = MAX_MATCH_TOKENS) -> int:
    """How many tokens ending at `end` equal the tokens ending at the last one (at most limit)."""
    last = len(tokens) - 1
    length = 0
    while length < limit and end - length >= 0 and tokens[end - length] == tokens[last - length]:
        length += 1
    return length


def propose_ngram_drafts(
    token_ids: np.ndarray, min_n: int, max_n: int, num_drafts: int, drafts_per_matched_token: int = 0
) -> list[int]:
    """Up to num_drafts tokens that followed the latest earlier occurrence of the longest matching
    suffix of token_ids (n in [min_n, max_n]); [] when no suffix of those lengths recurs. With
    drafts_per_matched_token > 0, at most that many per token of the match's full length (NgramConfig).

    token_ids: int 1-D, the request's prompt followed by its output so far.
    """
    if min_n < 1 or max_n < min_n:
        raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
    tokens = np.asarray(token_ids)
    if tokens.ndim != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {tokens.shape}")
    length = len(tokens)
    if num_drafts <= 0 or length <= min_n:
        return []
    # ends: positions e <= length - 2 where tokens[e - n + 1 .. e] equals the last n tokens, for the
    # current n; each longer n keeps the ends whose window extends one more token back and matches.
    ends = np.flatnonzero(tokens[: length - 1] == tokens[length - 1])
    best_end, n = -1, 1
    while len(ends):
        if n >= min_n:
            best_end = int(ends[-1])  # the latest occurrence of the longest n so far
        if n == max_n:
            break
        ends = ends[ends >= n]  # room for one more token before the window
        ends = ends[tokens[ends - n] == tokens[length - 1 - n]]
        n += 1
    if best_end < 0:
        return []
    if drafts_per_matched_token > 0:
        num_drafts = min(num_drafts, drafts_per_matched_token * matched_length(tokens, best_end))
    return [int(token) for token in tokens[best_end + 1 : best_end + 1 + num_drafts]]
