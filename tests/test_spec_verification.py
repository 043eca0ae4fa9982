"""Draft verification: greedy rows keep the target's argmax path; sampled rows keep the target distribution.

The statistical tests run many independent requests (one seed each) through one verify call and
compare the emitted tokens' frequencies with the filtered target by a chi-square test. Seeds are
fixed, so each test is deterministic; a correct sampler passes each at P_VALUE_THRESHOLD with
probability 1 - 1e-4, and the same counts reject the draft-biased distributions by far.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from services.engine.sampler import SamplingParams, filtered_probabilities, sample_tokens, uniform_draws
from services.engine.spec.verification import RESAMPLE_STREAM, verify_drafts

NUM_REQUESTS = 20_000
P_VALUE_THRESHOLD = 1e-4
# The target at three verify positions over a 6-token vocabulary; token 5 is impossible at position 0.
TARGETS = torch.tensor(
    [[0.40, 0.25, 0.15, 0.12, 0.08, 0.0], [0.05, 0.10, 0.45, 0.20, 0.15, 0.05], [0.30, 0.05, 0.05, 0.10, 0.20, 0.30]]
)
TARGET_LOGITS = torch.log(TARGETS)  # log 0 = -inf: p = 0 exactly


def _arrays(num_requests: int, temperature: float, top_p: float, top_k: int, counter: int = 3):
    """temperature, top_p, top_k, seeds, counters for identical requests, one seed each."""
    return (
        np.full(num_requests, temperature, dtype=np.float32),
        np.full(num_requests, top_p, dtype=np.float32),
        np.full(num_requests, top_k, dtype=np.int64),
        np.arange(num_requests, dtype=np.int64) + 1_000,
        np.full(num_requests, counter, dtype=np.int64),
    )


def _greedy(num_requests: int):
    return _arrays(num_requests, 0.0, 1.0, 0, counter=0)


def _chi_square_p_value(tokens: list[int], expected: torch.Tensor) -> float:
    """P(chi-square >= observed statistic) over the tokens with expected probability > 0; drawing a
    token of probability 0 fails outright."""
    counts = collections.Counter(tokens)
    possible = expected > 0
    assert all(possible[token] for token in counts), f"drew an impossible token: {counts}, expected {expected}"
    observed = torch.tensor([counts[token] for token in range(len(expected))], dtype=torch.float64)[possible]
    want = expected.double()[possible] / expected[possible].sum() * len(tokens)
    statistic = float(((observed - want) ** 2 / want).sum())
    degrees = int(possible.sum()) - 1
    if degrees == 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(degrees / 2.0), torch.tensor(statistic / 2.0)))


def _target(position: int, dtype: torch.dtype, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """The distribution the verifier must reproduce at a position: sampler.py's filters on the logits
    exactly as the verifier sees them (after the dtype's rounding)."""
    logits = TARGET_LOGITS[position].to(dtype).float()
    exact = filtered_probabilities(torch.softmax(logits / temperature, dim=-1), top_k, top_p)
    return exact / exact.sum()


def test_greedy_accepts_the_prefix_matching_the_argmax_then_emits_the_argmax():
    logits = torch.randn(13, 50, generator=torch.Generator().manual_seed(0))
    argmax = logits.argmax(dim=-1).tolist()
    wrong = [(token + 1) % 50 for token in argmax]
    drafts = [
        argmax[0:3],  # rows 0-3: all three accepted, then the bonus argmax at row 3
        [wrong[4], argmax[5]],  # rows 4-6: the first draft rejected
        [argmax[7], wrong[8], argmax[9]],  # rows 7-10: one accepted, the second rejected
        [],  # row 11: no drafts, a plain greedy step
        [argmax[12]][:0],  # row 12: k = 0 too
    ]
    out = verify_drafts(logits, drafts, *_greedy(len(drafts)))
    assert out == [argmax[0:4], [argmax[4]], [argmax[7], argmax[8]], [argmax[11]], [argmax[12]]]


def test_greedy_rows_next_to_sampled_ones_emit_their_argmax():
    """Greedy requests take their accepted prefix and final token from greedy_argmax, sampled ones from the
    softmax path, in one call (bf16 logits: the greedy rows are never upcast as a whole)."""
    logits = torch.randn(9, 60, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    argmax = logits.argmax(dim=-1).tolist()
    drafts = [argmax[0:2], [5, 6], [argmax[6], (argmax[7] + 1) % 60]]  # greedy, sampled, greedy
    temperature = np.array([0.0, 0.8, 0.0], dtype=np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.int64)
    out = verify_drafts(logits, drafts, temperature, ones, zeros, zeros, zeros)
    assert out[0] == argmax[0:3] and out[2] == [argmax[6], argmax[7]] and 1 <= len(out[1]) <= 3


@pytest.mark.parametrize("vocab", [40, 700], ids=["within-candidates", "past-candidates"])
def test_with_no_drafts_every_row_gets_exactly_the_samplers_token(vocab):
    num_requests = 64
    logits = torch.randn(num_requests, vocab, generator=torch.Generator().manual_seed(vocab)).to(torch.bfloat16)
    rows = np.arange(num_requests)
    temperature = np.where(rows % 4 == 0, 0.0, 0.6 + (rows % 3) * 0.4).astype(np.float32)
    top_p = np.where(rows % 3 == 0, 0.85, 1.0).astype(np.float32)
    top_k = np.where(rows % 5 == 0, 7, 0).astype(np.int64)
    seeds = rows.astype(np.int64) * 31
    for counter in range(5):
        counters = np.full(num_requests, counter, dtype=np.int64) + rows
        expected = sample_tokens(logits, SamplingParams.of(temperature, top_p, top_k, seeds, counters)).tolist()
        out = verify_drafts(logits, [[]] * num_requests, temperature, top_p, top_k, seeds, counters)
        assert [tokens[0] for tokens in out] == expected


def test_a_requests_tokens_do_not_depend_on_the_rest_of_the_batch():
    generator = torch.Generator().manual_seed(5)
    drafts = [[3, 1, 4], [], [1, 5], [9, 2, 6, 5], [3]]
    blocks = [torch.randn(len(row) + 1, 12, generator=generator) for row in drafts]
    params = (
        np.array([0.9, 0.0, 1.3, 0.7, 0.0], dtype=np.float32),
        np.array([1.0, 1.0, 0.8, 0.9, 1.0], dtype=np.float32),
        np.array([0, 0, 4, 0, 0], dtype=np.int64),
        np.array([11, 12, 13, 14, 15], dtype=np.int64),
        np.array([0, 4, 9, 2, 7], dtype=np.int64),
    )
    together = verify_drafts(torch.cat(blocks), drafts, *params)
    for request, block in enumerate(blocks):
        alone = verify_drafts(block, [drafts[request]], *(array[request : request + 1] for array in params))
        assert alone == [together[request]]
    reordered = [4, 2, 0, 3, 1]
    shuffled = verify_drafts(
        torch.cat([blocks[r] for r in reordered]), [drafts[r] for r in reordered], *(a[reordered] for a in params)
    )
    assert shuffled == [together[r] for r in reordered]


def test_a_rejections_redraw_uses_the_resample_stream_of_its_output_index():
    logits = TARGET_LOGITS[:2].clone()  # one request, one draft (token 5, impossible at position 0)
    for seed in range(50):
        arrays = _arrays(1, 1.0, 1.0, 0, counter=17)
        arrays = (*arrays[:3], np.array([seed], dtype=np.int64), arrays[4])
        (tokens,) = verify_drafts(logits, [[5]], *arrays)
        uniform = uniform_draws(np.array([seed]), np.array([17]) | RESAMPLE_STREAM)[0]
        expected = int(torch.searchsorted(torch.cumsum(TARGETS[0], 0), torch.tensor([float(uniform)]), right=True))
        assert tokens == [expected]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "temperature, top_p, top_k", [(1.0, 1.0, 0), (1.0, 1.0, 3), (0.7, 0.75, 0), (1.0, 0.8, 4)], ids=str
)
@pytest.mark.parametrize(
    "drafts", [(0, 2), (4, 5), (5, 0), (3, 1)], ids=["likely", "unlikely-then-rare", "impossible", "filterable"]
)
def test_emitted_tokens_follow_the_target_distribution(dtype, temperature, top_p, top_k, drafts):
    """Emitted token 1 ~ p_0; token 2, given token 1 was the accepted draft, ~ p_1 (a redraw or the
    accepted second draft); token 3, given both drafts were accepted, is the bonus ~ p_2. Drafts
    span likely, unlikely, impossible (p = 0) and filtered-out (top-k / top-p) tokens."""
    logits = TARGET_LOGITS.to(dtype).repeat(NUM_REQUESTS, 1)
    arrays = _arrays(NUM_REQUESTS, temperature, top_p, top_k)
    out = verify_drafts(logits, [list(drafts)] * NUM_REQUESTS, *arrays)
    targets = [_target(position, dtype, temperature, top_p, top_k) for position in range(3)]
    first = [tokens[0] for tokens in out]
    assert _chi_square_p_value(first, targets[0]) > P_VALUE_THRESHOLD
    after_first = [tokens[1] for tokens in out if tokens[0] == drafts[0]]
    assert all(len(tokens) == 1 for tokens in out if tokens[0] != drafts[0])  # a redraw ends the step
    if targets[0][drafts[0]] == 0:
        assert not after_first, "accepted a draft the target cannot produce"
        return
    assert _chi_square_p_value(after_first, targets[1]) > P_VALUE_THRESHOLD
    bonus = [tokens[2] for tokens in out if tokens[:2] == list(drafts)]
    assert (len(bonus) > 0) == bool(targets[1][drafts[1]] > 0)
    if len(bonus) > 50:
        assert _chi_square_p_value(bonus, targets[2]) > P_VALUE_THRESHOLD


def test_the_chi_square_check_rejects_the_draft_biased_distribution():
    """The statistical test has power: always accepting, or drawing from the unfiltered target, fails it."""
    arrays = _arrays(NUM_REQUESTS, 1.0, 0.8, 4)
    out = verify_drafts(TARGET_LOGITS[:2].repeat(NUM_REQUESTS, 1), [[1]] * NUM_REQUESTS, *arrays)
    first = [tokens[0] for tokens in out]
    assert _chi_square_p_value(first, _target(0, torch.float32, 1.0, 0.8, 4)) > P_VALUE_THRESHOLD
    assert _chi_square_p_value(first, TARGETS[0]) < 1e-6  # ignoring the filters is caught
    target = _target(0, torch.float32, 1.0, 0.8, 4)
    trusting = 0.8 * target + 0.2 * torch.nn.functional.one_hot(torch.tensor(1), 6)  # a draft accepted too often
    assert _chi_square_p_value(first, trusting) < 1e-6


def test_acceptance_rate_of_a_draft_is_its_target_probability():
    arrays = _arrays(NUM_REQUESTS, 1.0, 1.0, 0)
    out = verify_drafts(TARGET_LOGITS[:2].repeat(NUM_REQUESTS, 1), [[1]] * NUM_REQUESTS, *arrays)
    accepted = sum(len(tokens) == 2 for tokens in out) / NUM_REQUESTS
    assert abs(accepted - float(TARGETS[0, 1])) < 4 * (0.25 * 0.75 / NUM_REQUESTS) ** 0.5


def test_inconsistent_inputs_are_value_errors():
    logits = torch.zeros(3, 10)
    with pytest.raises(ValueError, match="sum"):
        verify_drafts(logits, [[1]], *_greedy(1))  # 2 rows expected
    with pytest.raises(ValueError, match="entries"):
        verify_drafts(logits, [[1], []], *_greedy(3))
    with pytest.raises(ValueError, match="vocabulary|lie in"):
        verify_drafts(logits, [[1, 10]], *_greedy(1))
