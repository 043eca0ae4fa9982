"""The batched sampler draws from exactly the top-k / top-p filtered distribution, reproducibly per row.

Reproducibility is by (seed, output index): a row's draw never depends on the other rows, its
position in the batch, or how many times it was drawn before in other batches (sampler.py).
"""

import collections

import numpy as np
import pytest
import torch

from services.engine.sampler import NUM_CANDIDATES, SamplingParams, filtered_probabilities, sample_tokens, uniform_draws

NUM_DRAWS = 4_000  # binomial std <= 0.008: the bound below is > 4 std


def _params(rows: list[tuple[float, float, int, int]], counter: int = 0) -> SamplingParams:
    """rows: (temperature, top_p, top_k, seed) each."""
    temperature, top_p, top_k, seed = (np.array(column) for column in zip(*rows, strict=True))
    counters = np.full(len(rows), counter, dtype=np.int64)
    floats, ints = np.float32, np.int64
    return SamplingParams.of(
        temperature.astype(floats), top_p.astype(floats), top_k.astype(ints), seed.astype(ints), counters
    )


@pytest.mark.parametrize("vocab", [10, 600], ids=["within-candidates", "past-candidates"])
@pytest.mark.parametrize(
    "temperature, top_p, top_k", [(0.7, 0.8, 0), (1.0, 1.0, 3), (1.0, 0.5, 4), (1.0, 1.0, 0), (2.0, 0.95, 0)]
)
def test_empirical_frequencies_match_the_filtered_distribution(vocab, temperature, top_p, top_k):
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(vocab))
    # One batch of NUM_DRAWS identical rows, each with its own seed: the draws are independent.
    rows = [(temperature, top_p, top_k, seed) for seed in range(NUM_DRAWS)]
    tokens = sample_tokens(logits.expand(NUM_DRAWS, vocab), _params(rows)).tolist()
    counts = collections.Counter(tokens)
    exact = filtered_probabilities(torch.softmax(logits[0] / temperature, dim=-1), top_k, top_p)
    exact = exact / exact.sum()
    empirical = torch.tensor([counts[token] / NUM_DRAWS for token in range(vocab)])
    assert set(counts) <= set(torch.nonzero(exact).flatten().tolist()), "drew a token the filters remove"
    assert (empirical - exact).abs().max() < 0.035


def test_a_flat_nucleus_past_the_candidates_is_drawn_from_the_full_sort():
    vocab = 4 * NUM_CANDIDATES
    logits = torch.zeros(1, vocab)  # uniform: a 0.9 nucleus holds ~922 tokens, past the candidates
    tokens = sample_tokens(logits.expand(2_000, vocab), _params([(1.0, 0.9, 0, s) for s in range(2_000)])).tolist()
    assert max(tokens) >= NUM_CANDIDATES and len(set(tokens)) > NUM_CANDIDATES


def test_a_rows_draws_do_not_depend_on_the_other_rows():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    rows = [(0.8, 0.9, 0, 7), (0.0, 1.0, 0, 0), (1.0, 0.9, 50, 3), (1.0, 1.0, 0, 5)]

    def run(order: list[int], counter: int) -> list[int]:
        tokens = sample_tokens(logits[order], _params([rows[row] for row in order], counter)).tolist()
        return [tokens[order.index(row)] for row in (0, 2, 3)]

    for counter in range(20):
        assert run([0, 2, 3], counter) == run([0, 1, 2, 3], counter) == run([3, 2, 1, 0], counter)


def test_the_draw_is_a_function_of_seed_and_output_index():
    seeds, counters = np.array([1, 1, 2, 2**40 + 1], dtype=np.int64), np.array([0, 1, 0, 0], dtype=np.int64)
    draws = uniform_draws(seeds, counters)
    assert np.array_equal(draws, uniform_draws(seeds, counters))  # same inputs, same draws
    assert len(set(draws.tolist())) == 4  # a different seed or index gives a different draw
    assert ((draws >= 0) & (draws < 1)).all()
    many = uniform_draws(np.arange(20_000, dtype=np.int64), np.zeros(20_000, dtype=np.int64))
    assert abs(float(many.mean()) - 0.5) < 0.01 and abs(float((many < 0.1).mean()) - 0.1) < 0.01


def test_greedy_rows_take_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert sample_tokens(logits, _params([(0.0, 1.0, 0, 0), (0.0, 0.5, 1, 0)])).tolist() == [1, 0]


def test_a_mixed_batch_keeps_greedy_rows_greedy():
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(3))
    rows = [(0.0, 1.0, 0, 0), (1.0, 1.0, 0, 1), (0.0, 1.0, 0, 0), (0.9, 0.7, 0, 2), (1.0, 1.0, 5, 3), (0.0, 0.5, 2, 0)]
    tokens = sample_tokens(logits, _params(rows))
    greedy = logits.argmax(dim=-1)
    assert tokens[[0, 2, 5]].tolist() == greedy[[0, 2, 5]].tolist()
    top5 = torch.topk(logits[4], 5).indices.tolist()
    assert int(tokens[4]) in top5


def test_greedy_argmax_is_torchs_argmax_on_every_dtype_ties_first():
    from services.engine.sampler import greedy_argmax

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=generator)
    logits[3, 10] = logits[3, 900] = logits[3].max() + 1  # a tie: the first index wins, as torch's
    logits[7] = 0.0  # all tied
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        rows = logits.to(dtype)
        tokens = greedy_argmax(rows)
        assert tokens.dtype == np.int64 and tokens.tolist() == rows.argmax(dim=-1).tolist()
    assert greedy_argmax(logits)[3] == 10 and greedy_argmax(logits)[7] == 0
