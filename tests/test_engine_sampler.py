"""The batched sampler draws from exactly the top-k / top-p filtered distribution, reproducibly per row."""

import collections

import pytest
import torch

from services.engine.request import SamplingOptions
from services.engine.sampler import _filtered_probabilities, make_generator, sample_next_tokens

NUM_DRAWS = 4_000  # binomial std <= 0.008: the bound below is > 4 std


def _options(temperature: float, top_p: float, top_k: int, seed: int = 1) -> SamplingOptions:
    return SamplingOptions(max_tokens=1, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, ignore_eos=False)


@pytest.mark.parametrize("vocab", [10, 600], ids=["within-candidates", "past-candidates"])
@pytest.mark.parametrize(
    "temperature, top_p, top_k", [(0.7, 0.8, 0), (1.0, 1.0, 3), (1.0, 0.5, 4), (1.0, 1.0, 0), (2.0, 0.95, 0)]
)
def test_empirical_frequencies_match_the_filtered_distribution(vocab, temperature, top_p, top_k):
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(vocab))
    option = _options(temperature, top_p, top_k)
    generator = make_generator(option, torch.device("cpu"))
    counts = collections.Counter(sample_next_tokens(logits, [option], [generator])[0] for _ in range(NUM_DRAWS))
    exact = _filtered_probabilities(torch.softmax(logits[0] / temperature, dim=-1), option)
    exact = exact / exact.sum()
    empirical = torch.tensor([counts[token] / NUM_DRAWS for token in range(vocab)])
    assert set(counts) <= set(torch.nonzero(exact).flatten().tolist()), "drew a token the filters remove"
    assert (empirical - exact).abs().max() < 0.035


def test_a_rows_draws_do_not_depend_on_the_other_rows():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    options = [_options(0.8, 0.9, 0, seed=7), _options(0.0, 1.0, 0), _options(1.0, 0.9, 50, seed=3), _options(1.0, 1.0, 0)]

    def run(rows: list[int]) -> list[int]:
        generators = [make_generator(options[row], torch.device("cpu")) for row in rows]
        drawn = [sample_next_tokens(logits[rows], [options[row] for row in rows], generators) for _ in range(20)]
        return [step[rows.index(0)] for step in drawn]

    assert run([0]) == run([0, 1, 2, 3]) == run([3, 2, 1, 0])


def test_greedy_rows_take_the_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert sample_next_tokens(logits, [_options(0.0, 1.0, 0), _options(0.0, 0.5, 1)], [None, None]) == [1, 0]
