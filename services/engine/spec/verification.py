"""Verifies draft tokens against the target model's logits: greedy and sampled rows in one call.

A request with k drafts d_0..d_{k-1} has k + 1 verify positions; position i holds the target's logits
for the token after its last sampled token and d_0..d_{i-1}:

    logits rows:  | r0: pos 0 .. pos k0 | r1: pos 0 .. pos k1 | ...      (sum(k_i + 1) rows, in order)
    emitted:        d_0 .. d_{a-1} (accepted), then one token from position a   (1..k + 1 tokens)

Greedy rows (temperature 0) accept the longest prefix of drafts equal to the target's argmax, then
emit the argmax at the first mismatch (the bonus argmax after all k).

Sampled rows: drafts are point masses q = delta(d), so rejection sampling keeps the target exactly:
accept d_i with probability p_i(d_i), where p_i is the target after temperature, top-k and top-p
exactly as sampler.py applies them; on the first rejection emit a draw from p_i with d_i removed and
renormalised (norm(max(0, p - q))); after k acceptances emit the bonus drawn from p_k by
sampler.sample_tokens itself. Hence with k = 0 every row gets sample_tokens' token, bit for bit.

Reproducibility (as in sampler.py): uniforms are pure functions of (seed, counter). A row's n-th
output token (n = counter + i at position i) uses uniform_draws(seed, n) for its accept test and
uniform_draws(seed, n | RESAMPLE_STREAM) for a rejection's redraw; the bonus uses (seed, n) like a
plain step. No (seed, counter) pair serves two draws: the request's next step starts at n + 1.

Work: one argmax over every row of the greedy requests (greedy_argmax), one softmax and one filter pass
over the draft positions of sampled rows, then at most one small draw per request. Only the cut of each
request's accepted prefix loops over requests, never over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from services.engine.sampler import (
    NUM_CANDIDATES,
    SamplingParams,
    greedy_argmax,
    kept_nucleus,
    sample_tokens,
    uniform_draws,
)

RESAMPLE_STREAM = np.int64(1 << 62)  # OR-ed into a counter: a rejection's redraw, never a main-stream draw


@dataclass(frozen=True)
class _Layout:
    """Where each request's drafts sit: flat draft index j (all requests' drafts concatenated) belongs
    to request request_of[j], is its draft number index_in_request[j], and is verified at logits row
    position[j]; request r's rows start at starts[r] and its drafts at draft_offsets[r]."""

    num_drafts: np.ndarray  # int64 [requests]: k_r
    starts: np.ndarray  # int64 [requests]: first logits row of the request
    draft_offsets: np.ndarray  # int64 [requests]: first flat draft index of the request
    drafts: np.ndarray  # int64 [sum k]: the draft token ids
    request_of: np.ndarray  # int64 [sum k]
    index_in_request: np.ndarray  # int64 [sum k]: i in 0..k_r - 1
    position: np.ndarray  # int64 [sum k]: logits row verifying the draft

    @classmethod
    def of(cls, draft_token_ids: Sequence[Sequence[int]]) -> _Layout:
        num_drafts = np.fromiter((len(row) for row in draft_token_ids), dtype=np.int64, count=len(draft_token_ids))
        starts = np.cumsum(num_drafts + 1) - (num_drafts + 1)
        draft_offsets = np.cumsum(num_drafts) - num_drafts
        total = int(num_drafts.sum())
        drafts = np.fromiter((token for row in draft_token_ids for token in row), dtype=np.int64, count=total)
        request_of = np.repeat(np.arange(len(num_drafts), dtype=np.int64), num_drafts)
        index_in_request = np.arange(total, dtype=np.int64) - draft_offsets[request_of]
        position = starts[request_of] + index_in_request
        return cls(num_drafts, starts, draft_offsets, drafts, request_of, index_in_request, position)


def verify_drafts(
    logits: torch.Tensor,
    draft_token_ids: Sequence[Sequence[int]],
    temperature: np.ndarray,
    top_p: np.ndarray,
    top_k: np.ndarray,
    seeds: np.ndarray,
    counters: np.ndarray,
) -> list[list[int]]:
    """Per request, its accepted drafts followed by one target token (1..k_i + 1 tokens).

    logits: [sum(k_i + 1), vocab], any float dtype, any device; draft_token_ids: per request its
    k_i >= 0 drafts; temperature (0 = greedy), top_p (>= 1 disables), top_k (0 disables): [requests]
    as in sampler.SamplingParams; seeds, counters: int64 [requests], counter = the request's output
    tokens so far. Raises ValueError on inconsistent shapes or a draft outside the vocabulary.
    """
    layout = _Layout.of(draft_token_ids)
    params = [np.asarray(array) for array in (temperature, top_p, top_k, seeds, counters)]
    _validate(logits, layout, params)
    temperature, top_p, top_k, seeds, counters = params
    sampled = temperature > 0.0
    accepted = np.zeros(len(layout.drafts), dtype=bool)
    # The target's argmax at every row of the greedy requests (their drafts' and their final token's rows).
    argmax = np.full(len(layout.position) + len(layout.num_drafts), -1, dtype=np.int64)
    greedy_rows = np.flatnonzero(np.repeat(~sampled, layout.num_drafts + 1))
    if len(greedy_rows):
        every_row = len(greedy_rows) == len(argmax)  # no sampled request: no copy of the greedy rows
        rows = logits if every_row else logits.index_select(0, torch.from_numpy(greedy_rows).to(logits.device))
        argmax[greedy_rows] = greedy_argmax(rows)
        greedy = np.flatnonzero(~sampled[layout.request_of])
        accepted[greedy] = argmax[layout.position[greedy]] == layout.drafts[greedy]
    sampled_drafts = np.flatnonzero(sampled[layout.request_of])
    logits = logits.float() if sampled.any() else logits  # only sampled rows read probabilities
    targets = _SampledTargets.of(logits, layout, sampled_drafts, params)
    if targets is not None:
        owners = layout.request_of[targets.draft_indices]
        uniforms = uniform_draws(seeds[owners], counters[owners] + layout.index_in_request[targets.draft_indices])
        accepted[targets.draft_indices] = uniforms < targets.probability_of(layout.drafts[targets.draft_indices])
    num_accepted = _accepted_prefix_lengths(accepted, layout)
    final = _final_tokens(logits, layout, num_accepted, argmax, targets, params)
    return [
        [int(token) for token in layout.drafts[offset : offset + a]] + [int(token)]
        for offset, a, token in zip(layout.draft_offsets, num_accepted, final)
    ]


def _validate(logits: torch.Tensor, layout: _Layout, params: list[np.ndarray]) -> None:
    num_requests = len(layout.num_drafts)
    if logits.dim() != 2 or logits.shape[0] != int((layout.num_drafts + 1).sum()):
        raise ValueError(f"logits {tuple(logits.shape)} must be [sum(k_i + 1), vocab] = [{num_requests} + drafts, V]")
    if any(array.shape != (num_requests,) for array in params):
        raise ValueError(f"temperature, top_p, top_k, seeds and counters must each have {num_requests} entries")
    if len(layout.drafts) and not (0 <= layout.drafts.min() and layout.drafts.max() < logits.shape[1]):
        raise ValueError(f"draft token ids must lie in [0, {logits.shape[1]})")


def _accepted_prefix_lengths(accepted: np.ndarray, layout: _Layout) -> np.ndarray:
    """Per request, how many of its drafts lead the drafts up to the first rejection."""
    num_accepted = layout.num_drafts.copy()
    for request in np.flatnonzero(layout.num_drafts):
        offset, k = layout.draft_offsets[request], layout.num_drafts[request]
        rejected = np.flatnonzero(~accepted[offset : offset + k])
        if len(rejected):
            num_accepted[request] = rejected[0]
    return num_accepted


def _final_tokens(
    logits: torch.Tensor,
    layout: _Layout,
    num_accepted: np.ndarray,
    argmax: np.ndarray,
    targets: _SampledTargets | None,
    params: list[np.ndarray],
) -> np.ndarray:
    """The one target token each request emits after its accepted drafts."""
    temperature, top_p, top_k, seeds, counters = params
    final = argmax[layout.starts + num_accepted]  # greedy requests: the argmax after their accepted drafts
    bonus = np.flatnonzero((num_accepted == layout.num_drafts) & (temperature > 0.0))
    if len(bonus):  # a sampled request accepted every draft (or had none): a plain step at position k
        k = layout.num_drafts[bonus]
        rows = torch.from_numpy(layout.starts[bonus] + k).to(logits.device)
        bonus_params = SamplingParams.of(
            temperature[bonus], top_p[bonus], top_k[bonus], seeds[bonus], counters[bonus] + k
        )
        final[bonus] = sample_tokens(logits.index_select(0, rows), bonus_params).cpu().numpy()
    rejected = np.flatnonzero((num_accepted < layout.num_drafts) & (temperature > 0.0))
    if len(rejected):
        assert targets is not None  # a sampled request rejected a draft, so its drafts have targets
        requests, drafts = rejected, layout.draft_offsets[rejected] + num_accepted[rejected]  # flat draft indices
        redraw_counters = (counters[requests] + num_accepted[requests]) | RESAMPLE_STREAM
        uniforms = uniform_draws(seeds[requests], redraw_counters)
        final[requests] = targets.draw_excluding(drafts, layout.drafts[drafts], uniforms)
    return final


class _SampledTargets:
    """The filtered target distribution p at the draft positions of sampled rows.

    masses[m] is row m's probability vector (temperature softmax) with every token outside its
    top-k / top-p set zeroed, unnormalised; it verifies flat draft draft_indices[m] (ascending)."""

    def __init__(self, draft_indices: np.ndarray, masses: torch.Tensor) -> None:
        self.draft_indices = draft_indices
        self.masses = masses

    @classmethod
    def of(
        cls, logits: torch.Tensor, layout: _Layout, draft_indices: np.ndarray, params: list[np.ndarray]
    ) -> _SampledTargets | None:
        if not len(draft_indices):
            return None
        temperature, top_p, top_k = (params[i][layout.request_of[draft_indices]] for i in range(3))
        device = logits.device
        rows = torch.from_numpy(layout.position[draft_indices]).to(device)
        scale = torch.from_numpy(temperature.astype(np.float32)).to(device)
        probabilities = torch.softmax(logits.index_select(0, rows) / scale[:, None], dim=-1)
        return cls(draft_indices, _filtered_masses(probabilities, top_k.astype(np.int64), top_p.astype(np.float32)))

    def probability_of(self, tokens: np.ndarray) -> np.ndarray:
        """float32 [rows]: p(token) of every row, normalised over its kept set."""
        index = torch.from_numpy(tokens).to(self.masses.device)[:, None]
        return (self.masses.gather(1, index)[:, 0] / self.masses.sum(dim=-1)).cpu().numpy()

    def draw_excluding(self, draft_indices: np.ndarray, tokens: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Draws from norm(p - delta(token)) at the given drafts' rows by inverse CDF in id order."""
        device = self.masses.device
        rows = torch.from_numpy(np.searchsorted(self.draft_indices, draft_indices)).to(device)  # both ascending
        index = torch.from_numpy(tokens).to(device)[:, None]
        residual = self.masses.index_select(0, rows).scatter_(1, index, 0.0)
        cumulative = torch.cumsum(residual, dim=-1)
        draw = torch.from_numpy(uniforms).to(device)[:, None] * cumulative[:, -1:]
        drawn = torch.searchsorted(cumulative, draw, right=True)[:, 0]
        # u * total can round up to total: stay on the last token that has mass.
        last_with_mass = (residual > 0).cumsum(dim=-1).argmax(dim=-1)
        return torch.minimum(drawn, last_with_mass).cpu().numpy()


def _filtered_masses(probabilities: torch.Tensor, top_k: np.ndarray, top_p: np.ndarray) -> torch.Tensor:
    """probabilities [rows, vocab] (overwritten) with the tokens top-k / top-p remove set to 0 (sampler.py's rule:
    top-k keeps the k most likely; top-p keeps a token while the renormalised mass before it < top_p,
    and always the most likely). Examines the top candidates; a full sort only for rows whose nucleus
    may reach past them, as sample_tokens does."""
    vocab = probabilities.shape[-1]
    limited = (top_k > 0) & (top_k <= vocab)
    filtered = np.flatnonzero(limited | (top_p < 1.0))
    if not len(filtered):
        return probabilities
    device = probabilities.device
    rows = torch.from_numpy(filtered).to(device)
    row_top_k = torch.from_numpy(np.where(limited, top_k, 0)[filtered]).to(device)
    row_top_p = torch.from_numpy(top_p[filtered]).to(device)
    largest_k = int(row_top_k.max())
    num_candidates = min(vocab, largest_k if limited[filtered].all() else max(NUM_CANDIDATES, largest_k))
    every_row = len(filtered) == probabilities.shape[0]
    chosen = probabilities if every_row else probabilities.index_select(0, rows)
    candidates, candidate_ids = torch.topk(chosen, num_candidates, dim=-1)
    kept, overflow = _kept_prefix(candidates, row_top_k, row_top_p)
    keep = torch.zeros_like(chosen, dtype=torch.bool).scatter_(1, candidate_ids, kept)
    if num_candidates < vocab and bool(overflow.any()):
        redo = torch.nonzero(overflow).flatten()
        ordered, ordered_ids = torch.sort(chosen[redo], dim=-1, descending=True)
        kept_redo = _kept_prefix(ordered, row_top_k[redo], row_top_p[redo])[0]
        keep[redo] = torch.zeros_like(ordered, dtype=torch.bool).scatter_(1, ordered_ids, kept_redo)
    # In place: probabilities is the caller's own temporary.
    return chosen.mul_(keep) if every_row else probabilities.index_copy_(0, rows, chosen.mul_(keep))


def _kept_prefix(
    candidates: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept [rows, n] bool, overflow [rows]) for descending candidates: the prefix that top-k then
    top-p keep (at least one), by sampler.kept_nucleus, the rule sample_tokens draws with; overflow
    marks rows without top-k that kept every candidate (their nucleus may extend past them)."""
    _, num_kept, overflow = kept_nucleus(candidates, top_k, top_p)
    columns = torch.arange(candidates.shape[-1], device=candidates.device)
    return columns[None, :] < num_kept[:, None], overflow
