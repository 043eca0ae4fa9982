"""Held-out metrics of a length predictor: ranking quality first, then error and calibration.

A scheduler that runs shortest-predicted-first needs the *order* of jobs right more than their
absolute lengths, so Kendall's tau between predicted and true lengths is the headline figure; the
MAE says how far off the numbers are, and quantile coverage says whether p10/p50/p90 mean what
they say (about 10% / 50% / 90% of true lengths at or below them).
"""

from __future__ import annotations

import math

import numpy as np

# Rows of the pairwise sign matrix computed at once: bounds memory to BLOCK_ROWS x n entries.
_BLOCK_ROWS = 512


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b (tie-corrected) of two equal-length vectors; nan when either is constant.

    Exact O(n^2) pair count in blocks: fine for held-out sets up to tens of thousands of rows.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
    concordant_minus_discordant = 0.0
    num_untied_x = 0.0  # pairs (i, j) with x_i != x_j, counted twice (i<j and j<i)
    num_untied_y = 0.0
    for start in range(0, x.shape[0], _BLOCK_ROWS):
        sign_x = np.sign(x[start : start + _BLOCK_ROWS, None] - x[None, :])
        sign_y = np.sign(y[start : start + _BLOCK_ROWS, None] - y[None, :])
        concordant_minus_discordant += float(np.sum(sign_x * sign_y))
        num_untied_x += float(np.count_nonzero(sign_x))
        num_untied_y += float(np.count_nonzero(sign_y))
    if num_untied_x == 0 or num_untied_y == 0:
        return math.nan
    return concordant_minus_discordant / math.sqrt(num_untied_x * num_untied_y)


def mean_absolute_error(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean |predicted - actual|, in tokens."""
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - np.asarray(actual, np.float64))))


def length_metrics(
    *,
    actual_tokens: np.ndarray,
    mean_tokens: np.ndarray,
    quantile_tokens: np.ndarray,
    quantile_levels: tuple[float, ...],
    prompt_tokens: np.ndarray,
    train_median_tokens: float,
) -> dict[str, float]:
    """The figures printed after training and stored in metadata.json, rounded for reading.

    quantile_tokens has shape (n, len(quantile_levels)); the median column is the point prediction
    for tau and MAE. Baselines: `baseline_tau_prompt_tokens` is what ranking by prompt length alone
    achieves; `baseline_mae_train_median_tokens` is the MAE of always answering the train median.
    """
    median_column = quantile_levels.index(0.5)
    p50 = quantile_tokens[:, median_column]
    metrics = {
        "num_examples": float(actual_tokens.shape[0]),
        "kendall_tau_p50": kendall_tau_b(p50, actual_tokens),
        "kendall_tau_mean": kendall_tau_b(mean_tokens, actual_tokens),
        "baseline_tau_prompt_tokens": kendall_tau_b(prompt_tokens, actual_tokens),
        "mae_p50_tokens": mean_absolute_error(p50, actual_tokens),
        "mae_mean_tokens": mean_absolute_error(mean_tokens, actual_tokens),
        "baseline_mae_train_median_tokens": mean_absolute_error(
            np.full(actual_tokens.shape, train_median_tokens), actual_tokens
        ),
        "actual_mean_tokens": float(np.mean(actual_tokens)),
        "predicted_mean_tokens": float(np.mean(mean_tokens)),
    }
    for column, level in enumerate(quantile_levels):
        coverage = float(np.mean(actual_tokens <= quantile_tokens[:, column]))
        metrics[f"coverage_p{round(level * 100)}"] = coverage
    return {name: round(value, 4) for name, value in metrics.items()}
