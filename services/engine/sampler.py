"""Turns the last-position logits of each sampling request into its next token.

Greedy (temperature 0) is an argmax. Otherwise: temperature, then top-k, then top-p (nucleus),
then a draw from the request's own generator, so a seeded request is reproducible whatever else
shares its batch.
"""

from __future__ import annotations

import torch

from services.engine.request import SamplingOptions


def sample_next_tokens(
    logits: torch.Tensor, options: list[SamplingOptions], generators: list[torch.Generator | None]
) -> list[int]:
    """logits [num_requests, vocab] (any float dtype); one token id per row."""
    logits = logits.float()
    greedy_ids = logits.argmax(dim=-1).tolist()
    tokens = []
    for row, (option, generator) in enumerate(zip(options, generators)):
        if option.temperature == 0.0 or generator is None:
            tokens.append(greedy_ids[row])
            continue
        probabilities = _filtered_probabilities(logits[row] / option.temperature, option)
        tokens.append(int(torch.multinomial(probabilities, 1, generator=generator).item()))
    return tokens


def _filtered_probabilities(scaled_logits: torch.Tensor, option: SamplingOptions) -> torch.Tensor:
    if 0 < option.top_k < scaled_logits.numel():
        kth_largest = torch.topk(scaled_logits, option.top_k).values[-1]
        scaled_logits = scaled_logits.masked_fill(scaled_logits < kth_largest, float("-inf"))
    probabilities = torch.softmax(scaled_logits, dim=-1)
    if option.top_p < 1.0:
        sorted_probs, sorted_ids = torch.sort(probabilities, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= option.top_p, 0.0)
        probabilities = torch.zeros_like(probabilities).scatter_(0, sorted_ids, sorted_probs)
    return probabilities


def make_generator(option: SamplingOptions, device: torch.device) -> torch.Generator | None:
    """The request's own generator; None for greedy requests (they need none)."""
    if option.temperature == 0.0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(option.seed)
    return generator
