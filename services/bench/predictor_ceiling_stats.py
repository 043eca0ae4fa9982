"""How well can any prompt-only predictor rank single-sample length labels? The statistics.

A label is one sampled answer's length. Two answers to the same prompt differ, so even a predictor
that knows everything the prompt determines cannot reach tau 1 against one sample. Three estimates:

- `leave_one_out_tau`: AlpacaEval has 227 models' answers to the same instructions. Ranking one
  model's lengths by the mean (or median) log length of the other 226 is a predictor that "knows
  the prompt perfectly across models". It is not a bound: a predictor for one model can also learn
  what that model does differently (near-copies of the model among the others help it, too).
- `pair_tau`: where one prompt has >= 2 independent answers (ShareGPT prompts shared in different
  conversations, or the served model sampled twice), tau between two answers per prompt, one pair per
  prompt (so "hi" counts once however often it was shared), averaged over random draws of the pair.
- `gaussian_ceiling_tau`: from that sample-vs-sample tau, the tau of the ideal predictor (the prompt's
  own expected log length) against one sample, under a stated model (below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from services.predictor.metrics import kendall_tau_b

NUM_DRAWS = 200  # random draws of one answer pair per prompt, averaged
NUM_BOOTSTRAP = 500  # resamples of prompts for the 95% interval
MIN_PROMPTS = 10  # fewer prompts than this: no figure (nan)


@dataclass(frozen=True)
class TauEstimate:
    """A tau with its 95% bootstrap interval over prompts; nan where there were too few prompts."""

    tau: float
    low: float  # 2.5th percentile of the bootstrap
    high: float  # 97.5th percentile
    num_prompts: int

    def as_dict(self) -> dict[str, float]:
        return {"tau": self.tau, "ci95_low": self.low, "ci95_high": self.high, "num_prompts": self.num_prompts}


def gaussian_ceiling_tau(sample_tau: float) -> float:
    """Tau of the ideal prompt-only predictor against one sample, given tau between two samples.

    Model: log length = prompt effect + noise, noise independent of the prompt and between samples,
    jointly Gaussian. Then corr(sample, sample) = r (the prompt's share of the variance) and
    corr(prompt effect, sample) = sqrt(r); for a bivariate normal, tau = (2 / pi) * asin(corr)
    (Greiner's relation), both ways. So a sample-vs-sample tau of 0.40 means an ideal predictor
    reaches 0.56. Heavy tails or ties (capped answers) make this approximate; nan for tau <= 0.
    """
    if not sample_tau > 0.0:
        return math.nan
    share = math.sin(math.pi * min(sample_tau, 1.0) / 2.0)
    return 2.0 / math.pi * math.asin(math.sqrt(share))


def _interval(values: Sequence[float]) -> tuple[float, float]:
    finite = np.asarray([v for v in values if not math.isnan(v)], np.float64)
    if finite.size == 0:
        return math.nan, math.nan
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def bootstrap_tau(
    statistic: Callable[[np.ndarray, np.random.Generator], float],
    num_prompts: int,
    *,
    seed: int,
    num_bootstrap: int = NUM_BOOTSTRAP,
) -> tuple[float, float]:
    """95% interval of statistic(prompt indices, rng) over prompts resampled with replacement."""
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, num_prompts, num_prompts), rng) for _ in range(num_bootstrap)]
    return _interval(values)


def _draw_pair(answers: Sequence[np.ndarray], rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """One random ordered pair of distinct answers per prompt of rows."""
    first, second = np.empty(rows.size), np.empty(rows.size)
    for out, row in enumerate(rows):
        i, j = rng.choice(answers[row].size, size=2, replace=False)
        first[out], second[out] = answers[row][i], answers[row][j]
    return first, second


def pair_tau(
    answers: Sequence[np.ndarray], *, seed: int = 0, num_draws: int = NUM_DRAWS, num_bootstrap: int = NUM_BOOTSTRAP
) -> TauEstimate:
    """Tau between two answers per prompt (each entry: lengths of >= 2 independent answers).

    One pair per prompt and draw; the tau is the mean over draws, the interval resamples prompts
    (one draw per resample). Length ties count as tau-b ties.
    """
    if any(a.size < 2 for a in answers):
        raise ValueError("every prompt needs at least 2 answers")
    if len(answers) < MIN_PROMPTS:
        return TauEstimate(math.nan, math.nan, math.nan, len(answers))
    rng = np.random.default_rng(seed)
    everyone = np.arange(len(answers))
    tau = float(np.mean([kendall_tau_b(*_draw_pair(answers, everyone, rng)) for _ in range(num_draws)]))
    low, high = bootstrap_tau(
        lambda rows, r: kendall_tau_b(*_draw_pair(answers, rows, r)),
        len(answers),
        seed=seed,
        num_bootstrap=num_bootstrap,
    )
    return TauEstimate(tau, low, high, len(answers))


def predictor_tau(
    scores: np.ndarray,
    answers: Sequence[np.ndarray],
    *,
    seed: int = 0,
    num_draws: int = NUM_DRAWS,
    num_bootstrap: int = NUM_BOOTSTRAP,
) -> TauEstimate:
    """Tau of one score per prompt against one randomly drawn answer per prompt (same draws as pair_tau)."""
    if len(answers) < MIN_PROMPTS:
        return TauEstimate(math.nan, math.nan, math.nan, len(answers))
    scores = np.asarray(scores, np.float64)

    def once(rows: np.ndarray, rng: np.random.Generator) -> float:
        drawn = np.array([answers[row][rng.integers(answers[row].size)] for row in rows])
        return kendall_tau_b(scores[rows], drawn)

    rng = np.random.default_rng(seed)
    tau = float(np.mean([once(np.arange(len(answers)), rng) for _ in range(num_draws)]))
    low, high = bootstrap_tau(once, len(answers), seed=seed, num_bootstrap=num_bootstrap)
    return TauEstimate(tau, low, high, len(answers))


def leave_one_out_scores(log_lengths: np.ndarray, column: int, *, use_median: bool = False) -> np.ndarray:
    """Per prompt (row): the mean (or median) log length of every other column, NaNs skipped."""
    others = np.delete(np.asarray(log_lengths, np.float64), column, axis=1)
    return np.nanmedian(others, axis=1) if use_median else np.nanmean(others, axis=1)


def paired_tau(scores: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> TauEstimate:
    """Tau of scores against labels (one each per prompt) with a bootstrap interval over prompts."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    if scores.size < MIN_PROMPTS:
        return TauEstimate(math.nan, math.nan, math.nan, int(scores.size))
    low, high = bootstrap_tau(lambda rows, _: kendall_tau_b(scores[rows], labels[rows]), scores.size, seed=seed)
    return TauEstimate(kendall_tau_b(scores, labels), low, high, int(scores.size))
