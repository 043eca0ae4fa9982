"""N-gram prompt lookup: drafts are the tokens that followed an earlier match of the request's last tokens.

For n from max_n down to min_n, the request's own tokens (prompt + output) are searched for an
earlier occurrence of their last n tokens; the first n that matches wins, its latest occurrence is
used, and the (up to num_drafts) tokens that followed it are the drafts:

    tokens:   ... a b c x y ... a b c | (next?)          last n = 3 tokens "a b c"
                  ^^^^^ latest earlier occurrence (it ends before the suffix's own last token)
    drafts:   x y ...

A window that overlaps the suffix counts (in "a a a a" the suffix "a a" matches at the third token),
so a repeating pattern drafts its continuation; with copy_past_end the copy goes on through the
drafts themselves (as LZ77 copies an overlapping match), so a loop of period p drafts the full k,
not just the p tokens left before the end:

    tokens:   x a b a b | ...          latest "a b" ends 2 back (period 2)
    drafts:   a b a b ...              (without copy_past_end: "a b" only)

When no suffix of min_n tokens or more recurs, the unigram fallback (num_unigram_drafts > 0) looks at
what followed every earlier occurrence of the last token and drafts the most frequent continuation
(its latest occurrence) when at least min_unigram_share of them agree on its first token.

Drafting is deterministic: no distribution, the verifier treats drafts as point masses
(verification.py). Cost (host, per drafting request per step): one vectorised comparison of the whole
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
    """--ngram-min / --ngram-max: the n-gram lengths tried, longest first; and how long a draft is.

    Defaults: vLLM sets prompt_lookup_min = prompt_lookup_max = 5 ("arbitrarily chosen") when neither
    is given; Hugging Face's prompt lookup tries 2 then 1, the original prompt-lookup decoding 3 to 1.
    Measured here on 200 ShareGPT first turns (the reply's own next tokens standing in for the
    model's, 4 drafts): n 4..2 drafts at 37% of steps with 35% of drafts accepted (1.53 tokens per
    step); adding n = 1 with the full k drafts at 69% of steps but its extra drafts are accepted only
    8.5% of the time; 5..5 drafts at 13% of steps (1.27). So 4..2 for the full-length drafts, and a
    unigram only as a short, voted fallback (below).
    """

    min_n: int = 2  # shortest suffix matched, tokens
    max_n: int = 4  # longest suffix matched, tokens; tried first
    # A match of m tokens (the suffix extended back as far as it agrees, up to MAX_MATCH_TOKENS) drafts at
    # most this many tokens per matched token; 0 = always the k granted. A long match is a copy in
    # progress and tends to go on, a 2-token match rarely (replayed on off's greedy outputs of SmolLM2,
    # docs/benchmarks/spec/spec_bound.json: k 16 with 2 per matched token beats a fixed k 4 or 16).
    drafts_per_matched_token: int = 2
    # Copy through the drafts when the match's continuation reaches the end (a loop drafts the full k).
    # Replayed: open chat 1.26x -> 1.47x on the benchmarked prompts (SmolLM2 repeats itself there).
    copy_past_end: bool = True
    # When no suffix of min_n or more tokens recurs: drafts from the last token alone (0 = none), only
    # if at least min_unigram_share of its earlier occurrences were followed by the same token. Replayed
    # (k 16, 2 per matched token, past-end copies): 2 drafts at share 0.5 gain on all three sets; the
    # latest occurrence without the vote drafts twice as often for the same gain (more verify work).
    num_unigram_drafts: int = 2
    min_unigram_share: float = 0.5

    def __post_init__(self) -> None:
        if self.min_n < 1:
            raise ValueError(f"ngram min_n must be >= 1, got {self.min_n}")
        if self.max_n < self.min_n:
            raise ValueError(f"ngram max_n ({self.max_n}) must be >= min_n ({self.min_n})")
        if self.drafts_per_matched_token < 0:
            raise ValueError(f"drafts_per_matched_token must be >= 0, got {self.drafts_per_matched_token}")
        if self.num_unigram_drafts < 0:
            raise ValueError(f"num_unigram_drafts must be >= 0, got {self.num_unigram_drafts}")
        if not 0.0 <= self.min_unigram_share <= 1.0:
            raise ValueError(f"min_unigram_share must be in [0, 1], got {self.min_unigram_share}")

    def propose(self, token_ids: np.ndarray, num_drafts: int) -> list[int]:
        """Up to num_drafts drafts for a request whose tokens so far are token_ids (this config's rules)."""
        tokens = _as_tokens(token_ids)
        end, num_drafts = self.source(tokens, num_drafts)
        return copy_continuation(tokens, end, num_drafts, self.copy_past_end) if end >= 0 else []

    def propose_with_source(self, token_ids: np.ndarray, num_drafts: int) -> tuple[list[int], bool]:
        """(drafts, whether they come from an n-gram match of min_n or more tokens, not the unigram fallback)."""
        tokens = _as_tokens(token_ids)
        end, num_drafts = self.source(tokens, num_drafts)
        if end < 0:
            return [], False
        matched = matched_length(tokens, end, self.min_n) >= self.min_n
        return copy_continuation(tokens, end, num_drafts, self.copy_past_end), matched

    def source(self, tokens: np.ndarray, num_drafts: int) -> tuple[int, int]:
        """(end, how many drafts): the earlier position whose continuation is copied, by this config's rules
        (n-gram match, else the voted unigram), and the draft length; (-1, 0) when nothing is drafted."""
        if num_drafts <= 0:
            return -1, 0
        end, _ = latest_match(tokens, self.min_n, self.max_n)
        if end >= 0:
            if self.drafts_per_matched_token > 0:
                num_drafts = min(num_drafts, self.drafts_per_matched_token * matched_length(tokens, end))
            return end, num_drafts
        if self.num_unigram_drafts == 0 or self.min_n == 1:
            return -1, 0
        end = voted_unigram_match(tokens, self.min_unigram_share)
        return (end, min(num_drafts, self.num_unigram_drafts)) if end >= 0 else (-1, 0)


MAX_MATCH_TOKENS = 64  # how far back a match's length is counted (it only caps k, at most 16)


def matched_length(tokens: np.ndarray, end: int, limit: int = MAX_MATCH_TOKENS) -> int:
    """How many tokens ending at `end` equal the tokens ending at the last one (at most limit)."""
    last = len(tokens) - 1
    length = 0
    while length < limit and end - length >= 0 and tokens[end - length] == tokens[last - length]:
        length += 1
    return length


def _as_tokens(token_ids: np.ndarray) -> np.ndarray:
    tokens = np.asarray(token_ids)
    if tokens.ndim != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {tokens.shape}")
    return tokens


def copy_continuation(tokens: np.ndarray, end: int, num_drafts: int, copy_past_end: bool) -> list[int]:
    """The num_drafts tokens after position end; past the last token, the drafts so far (if allowed)."""
    drafts = [int(token) for token in tokens[end + 1 : end + 1 + num_drafts]]
    if copy_past_end:
        period = len(tokens) - 1 - end  # drafts[i] repeats drafts[i - period] once past the end
        while len(drafts) < num_drafts:
            drafts.append(drafts[len(drafts) - period])
    return drafts


def latest_match(tokens: np.ndarray, min_n: int, max_n: int) -> tuple[int, int]:
    """(end, n): the latest earlier occurrence of the longest suffix of tokens with n in [min_n, max_n]
    (it ends at `end` <= len - 2); (-1, 0) when none recurs."""
    length = len(tokens)
    if length <= min_n:
        return -1, 0
    # ends: positions e <= length - 2 where tokens[e - n + 1 .. e] equals the last n tokens, for the
    # current n; each longer n keeps the ends whose window extends one more token back and matches.
    ends = np.flatnonzero(tokens[: length - 1] == tokens[length - 1])
    best_end, best_n, n = -1, 0, 1
    while len(ends):
        if n >= min_n:
            best_end, best_n = int(ends[-1]), n  # the latest occurrence of the longest n so far
        if n == max_n:
            break
        ends = ends[ends >= n]  # room for one more token before the window
        ends = ends[tokens[ends - n] == tokens[length - 1 - n]]
        n += 1
    return best_end, best_n


def propose_ngram_drafts(
    token_ids: np.ndarray,
    min_n: int,
    max_n: int,
    num_drafts: int,
    drafts_per_matched_token: int = 0,
    *,
    copy_past_end: bool = False,
) -> list[int]:
    """Up to num_drafts tokens that followed the latest earlier occurrence of the longest matching
    suffix of token_ids (n in [min_n, max_n]); [] when no suffix of those lengths recurs. With
    drafts_per_matched_token > 0, at most that many per token of the match's full length; with
    copy_past_end, a match near the end copies on through its own drafts (NgramConfig).

    token_ids: int 1-D, the request's prompt followed by its output so far.
    """
    # NgramConfig raises ValueError on a bad n range
    rules = NgramConfig(min_n, max_n, drafts_per_matched_token, copy_past_end=copy_past_end, num_unigram_drafts=0)
    return rules.propose(token_ids, num_drafts)


def voted_unigram_match(tokens: np.ndarray, min_share: float) -> int:
    """The earlier occurrence of the last token whose continuation the vote picks: of the tokens that
    followed its earlier occurrences, the most frequent (ties: the one that occurred latest) if at
    least min_share of them agree, and its latest occurrence; -1 when none."""
    length = len(tokens)
    if length < 2:
        return -1
    ends = np.flatnonzero(tokens[: length - 1] == tokens[length - 1])
    if not len(ends):
        return -1
    following = tokens[ends + 1]
    values, counts = np.unique(following, return_counts=True)
    best = counts.max()
    if best < min_share * len(ends):
        return -1
    return int(ends[np.flatnonzero(np.isin(following, values[counts == best]))[-1]])


def propose_unigram_drafts(
    token_ids: np.ndarray, num_drafts: int, min_share: float, *, copy_past_end: bool = False
) -> list[int]:
    """Up to num_drafts tokens after the voted occurrence of the last token (voted_unigram_match); []
    when the last token never occurred before or no continuation has min_share of the votes."""
    tokens = _as_tokens(token_ids)
    end = voted_unigram_match(tokens, min_share) if num_drafts > 0 else -1
    return copy_continuation(tokens, end, num_drafts, copy_past_end) if end >= 0 else []
