"""Losses of the fine-tuned length encoder: regression and pairwise ranking on log1p(output tokens).

A scheduler needs the order of jobs right (Kendall's tau) more than their lengths, so the encoder is
trained to rank (vllm-ltr trains its ranker with a listwise loss) while a regression term keeps its
scores on the log1p(tokens) scale that the trees, text heads and quantiles read.

    loss = regression + ranking_weight * pairwise

- regression: squared error over each prompt's known generator columns (NaN = no answer), averaged
  per prompt, then over prompts: every prompt weighs the same, whatever its number of answers.
- pairwise (RankNet): for every pair of prompts in the batch answered by the same generator column
  with log lengths at least `min_log_gap` apart, softplus(-(s_i - s_j) * sign(t_i - t_j)), averaged
  over such pairs. Pairs only within one generator: the same prompt gets lengths up to 50x apart
  from different models, so a cross-generator pair compares verbosity of models, not prompts.
- soft pairs (optional, `soft_targets`): for prompts with lengths from many generators (AlpacaEval's
  227 length-only generators), P(i longer than j) = the share of generators that answered both and
  wrote more for i; binary cross-entropy of sigmoid(s_i - s_j) against it, on one extra score column.
"""

from __future__ import annotations

DEFAULT_MIN_LOG_GAP = 0.1  # pairs closer than ~10% in length are near-ties: no ranking signal


def regression_loss(scores, targets):
    """Squared error over each row's known targets (NaN = unknown), averaged per row, then over rows."""
    import torch

    known = ~torch.isnan(targets)
    error = torch.where(known, scores - torch.nan_to_num(targets), torch.zeros_like(scores))
    return ((error**2).sum(dim=1) / known.sum(dim=1).clamp(min=1)).mean()


def pairwise_loss(scores, targets, min_log_gap: float = DEFAULT_MIN_LOG_GAP):
    """RankNet loss over within-column pairs of the batch (see the module doc); 0 without pairs.

    scores, targets: [n, G]; NaN targets are unknown.
    """
    import torch

    known = ~torch.isnan(targets)
    filled = torch.nan_to_num(targets)
    target_gap = filled[:, None, :] - filled[None, :, :]  # [n, n, G]: t_i - t_j
    score_gap = scores[:, None, :] - scores[None, :, :]
    usable = known[:, None, :] & known[None, :, :] & (target_gap > min_log_gap)  # each pair once: i longer
    if not bool(usable.any()):
        return scores.sum() * 0.0
    return torch.nn.functional.softplus(-score_gap[usable]).mean()


def soft_pairwise_loss(score, soft_targets):
    """Cross-entropy of sigmoid(s_i - s_j) against P(i longer than j) over generators (module doc).

    score: [n] one column; soft_targets: [n, M] log lengths of M generators (NaN = unknown).
    Pairs answered by no generator in common are skipped; 0 without any pair.
    """
    import torch

    known = (~torch.isnan(soft_targets)).float()
    filled = torch.nan_to_num(soft_targets)
    both = known[:, None, :] * known[None, :, :]  # [n, n, M]
    longer = (filled[:, None, :] > filled[None, :, :]).float() * both
    shorter = (filled[:, None, :] < filled[None, :, :]).float() * both
    decided = longer.sum(dim=2) + shorter.sum(dim=2)
    usable = decided > 0
    if not bool(usable.any()):
        return score.sum() * 0.0
    probability = longer.sum(dim=2)[usable] / decided[usable]
    logits = (score[:, None] - score[None, :])[usable]
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, probability)
