"""Turns the last-position logits of every sampling row into its next token, all rows at once, on device.

Greedy (temperature 0) is an argmax. Otherwise: temperature, then top-k, then top-p (nucleus),
then an inverse-CDF draw with the row's own uniform number:

    top-k keeps the k most likely tokens and renormalises; top-p then keeps the smallest prefix whose
    renormalised mass reaches top_p (a token is kept while the mass before it < top_p).

All rows share one softmax and one top-k over NUM_CANDIDATES (or the largest top_k) candidates;
rows whose nucleus may reach past the candidates are redrawn from a full sort, rows with no filter
at all straight from the unsorted distribution (any order is a valid inverse CDF).

Reproducibility (the guarantee, tested): a seeded request's draw for its n-th output token is a
pure function of (seed, n) and its own logits: uniform = hash(seed, n) (splitmix64, computed on the
host with numpy). So a request gives the same tokens for the same seed whatever shares its batch,
whichever row it sits in, after a recompute preemption, and on any device whose logits agree.
Before this module was batched, draws came from a per-request torch.Generator stream; the same seed
now gives different (equally distributed) tokens than those releases did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NUM_CANDIDATES = 256  # highest-probability tokens examined per row before falling back to a full sort
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def uniform_draws(seeds: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """float32 in [0, 1), one per row: splitmix64 of (seed, counter), top 24 bits."""
    with np.errstate(over="ignore"):
        z = seeds.astype(np.uint64) * _GOLDEN + counters.astype(np.uint64) * _MIX2 + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)


@dataclass(frozen=True)
class SamplingParams:
    """The step's sampling rows, as host arrays (built by the model runner from the input batch)."""

    temperature: np.ndarray  # float32 [rows]; 0 = greedy
    top_p: np.ndarray  # float32 [rows]; >= 1 disables
    top_k: np.ndarray  # int64 [rows]; 0 disables
    uniforms: np.ndarray  # float32 [rows] in [0, 1): each row's draw (uniform_draws)

    @classmethod
    def of(cls, temperature, top_p, top_k, seeds, counters) -> "SamplingParams":
        return cls(temperature, top_p, top_k, uniform_draws(seeds, counters))


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """int64 [rows] on the logits' device: each row's argmax, the first on ties (as torch.argmax). On CPU
    through NumPy over float32: torch's CPU argmax over SmolLM2's 49k vocabulary takes ~0.18 ms a row on
    bf16 logits (~3 ms for a batch of 16, 12 ms for 64) and ~0.05 ms on float32, NumPy ~0.02 ms with the
    upcast. Elsewhere torch's own (no round trip through the host)."""
    if logits.device.type != "cpu":
        return logits.argmax(dim=-1)
    return torch.from_numpy(logits.float().numpy().argmax(axis=-1).astype(np.int64, copy=False))


def greedy_argmax(logits: torch.Tensor) -> np.ndarray:
    """argmax_rows on the host (the runner's and verification's token lists)."""
    return argmax_rows(logits).cpu().numpy()


def sample_tokens(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [rows, vocab] (any float dtype) -> int64 [rows] token ids, on the logits' device."""
    logits = logits.float()
    sampled_rows = params.temperature > 0.0
    device, vocab = logits.device, logits.shape[-1]
    if not sampled_rows.any():
        return argmax_rows(logits)
    # The argmax only where a row is greedy (on CPU it costs as much as the softmax).
    tokens = torch.empty(len(sampled_rows), dtype=torch.long, device=device)
    if not sampled_rows.all():
        greedy = torch.from_numpy(np.flatnonzero(~sampled_rows)).to(device)
        tokens.index_copy_(0, greedy, argmax_rows(logits.index_select(0, greedy)))
    limited = (params.top_k > 0) & (params.top_k <= vocab)
    plain = sampled_rows & ~limited & (params.top_p >= 1.0)  # no filter: the whole distribution
    filtered = sampled_rows & ~plain
    # Temperatures (1 on greedy rows) and uniforms reach the device in one copy.
    host = np.stack([np.where(sampled_rows, params.temperature, 1.0), params.uniforms]).astype(np.float32)
    temperature, uniforms = torch.from_numpy(host).to(device)
    probabilities = torch.softmax(logits / temperature[:, None], dim=-1)
    if plain.any():
        rows = torch.from_numpy(np.flatnonzero(plain)).to(device)
        tokens.index_copy_(0, rows, _draw_unsorted(probabilities[rows], uniforms[rows]))
    if filtered.any():
        tokens.index_copy_(0, *_draw_filtered(probabilities, uniforms, params, filtered, limited))
    return tokens


def _draw_filtered(probabilities, uniforms, params: SamplingParams, filtered: np.ndarray, limited: np.ndarray):
    """(rows, tokens) of the rows with top-k and/or top-p, drawn among the top candidates (a full sort
    for rows whose nucleus may reach past them). When every such row has a top-k, the largest top-k
    candidates suffice (none can overflow); otherwise NUM_CANDIDATES at least."""
    device, vocab = probabilities.device, probabilities.shape[-1]
    rows_host = np.flatnonzero(filtered)
    rows = torch.from_numpy(rows_host).to(device)
    if len(rows_host) < len(filtered):
        probabilities, uniforms = probabilities[rows], uniforms[rows]
    top_k = torch.from_numpy(np.where(limited, params.top_k, 0)[rows_host]).to(device)
    top_p = torch.from_numpy(params.top_p[rows_host]).to(device)
    largest_k = int(params.top_k[rows_host].max())
    num_candidates = min(vocab, largest_k if limited[rows_host].all() else max(NUM_CANDIDATES, largest_k))
    candidates, candidate_ids = torch.topk(probabilities, num_candidates, dim=-1)
    drawn, overflow = _draw_nucleus(candidates, candidate_ids, top_k, top_p, uniforms)
    if num_candidates < vocab and bool(overflow.any()):  # nucleus may reach past the candidates
        redo = torch.nonzero(overflow).flatten()
        ordered, ordered_ids = torch.sort(probabilities[redo], dim=-1, descending=True)
        drawn[redo] = _draw_nucleus(ordered, ordered_ids, top_k[redo], top_p[redo], uniforms[redo])[0]
    return rows, drawn


def _draw_unsorted(probabilities: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse CDF over the vocabulary in id order: [rows, vocab], [rows] -> [rows]."""
    cumulative = torch.cumsum(probabilities, dim=-1)
    draw = uniforms[:, None] * cumulative[:, -1:]
    index = torch.searchsorted(cumulative, draw, right=True)
    return index.clamp_(max=probabilities.shape[-1] - 1)[:, 0]


def kept_nucleus(
    candidates: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The keep rule of top-k then top-p over descending candidates [rows, n], the one place it is written
    (sampling here and rejection sampling in spec/verification.py must keep the same tokens).

    Returns (cumulative [rows, n]: running sum of candidates, num_kept [rows] >= 1: the kept prefix's
    length, overflow [rows]: rows without top-k whose nucleus kept every candidate, so it may extend
    past them and must be redone on a full sort).
    """
    num_candidates = candidates.shape[-1]
    limited = top_k > 0
    num_limit = torch.where(limited, top_k.clamp(max=num_candidates), num_candidates)
    cumulative = torch.cumsum(candidates, dim=-1)
    total = torch.where(limited, cumulative.gather(1, (num_limit - 1)[:, None])[:, 0], 1.0)
    mass_before = (cumulative - candidates) / total[:, None]
    columns = torch.arange(num_candidates, device=candidates.device)
    keep = (columns[None, :] < num_limit[:, None]) & ((mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0))
    num_kept = keep.sum(dim=-1).clamp_(min=1)
    return cumulative, num_kept, (num_kept == num_candidates) & ~limited


def _draw_nucleus(
    candidates: torch.Tensor,
    candidate_ids: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws within the top-k / top-p prefix of descending candidates [rows, n].

    Returns (token ids [rows], overflow [rows]): overflow marks rows without top-k whose nucleus
    kept every candidate, so it may extend past them (their draw is then redone on a full sort).
    """
    cumulative, num_kept, overflow = kept_nucleus(candidates, top_k, top_p)
    kept_mass = cumulative.gather(1, (num_kept - 1)[:, None])
    index = torch.searchsorted(cumulative, uniforms[:, None] * kept_mass, right=True)
    index = torch.minimum(index, (num_kept - 1)[:, None])
    return candidate_ids.gather(1, index)[:, 0], overflow


def filtered_probabilities(probabilities: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """One row's full distribution with top-k and top-p applied, unnormalised (the tests' reference)."""
    if 0 < top_k < probabilities.numel():
        kth_largest = torch.topk(probabilities, top_k).values[-1]
        probabilities = probabilities.masked_fill(probabilities < kth_largest, 0.0)
        probabilities = probabilities / probabilities.sum()
    if top_p < 1.0:
        sorted_probs, sorted_ids = torch.sort(probabilities, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probabilities = torch.zeros_like(probabilities).scatter_(0, sorted_ids, sorted_probs)
    return probabilities
