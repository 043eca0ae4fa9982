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


BUCKET_UPPER_EDGES_TOKENS: tuple[float, ...] = (64, 128, 256, 512, 1024)  # buckets: <=64, 65-128, ..., >1024


def rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (what Spearman's rho needs)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson on average ranks); nan when either is constant."""
    rank_x, rank_y = rank_average(x), rank_average(y)
    if np.std(rank_x) == 0 or np.std(rank_y) == 0:
        return math.nan
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def share_within(predicted: np.ndarray, actual: np.ndarray, tolerance_tokens: float) -> float:
    """Share of predictions within tolerance_tokens of the truth (Acc-50, Acc-100)."""
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - actual) <= tolerance_tokens))


def bucket_accuracy(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Share of predictions in the same length bucket as the truth (BUCKET_UPPER_EDGES_TOKENS)."""
    edges = np.asarray(BUCKET_UPPER_EDGES_TOKENS)
    return float(np.mean(np.searchsorted(edges, predicted, "left") == np.searchsorted(edges, actual, "left")))


def prediction_metrics(
    *,
    actual_tokens: np.ndarray,
    mean_tokens: np.ndarray,
    quantile_tokens: np.ndarray,
    quantile_levels: tuple[float, ...],
) -> dict[str, float]:
    """Every figure of one predictor on one set, rounded for reading (nan where undefined).

    quantile_tokens has shape (n, len(quantile_levels)); the p50 column is the point prediction
    for tau, Spearman, MAE, Acc-N and buckets. Coverage of level q is the share of true lengths at
    or below the predicted q-quantile (ideal: q).
    """
    actual = np.asarray(actual_tokens, np.float64)
    p50 = quantile_tokens[:, quantile_levels.index(0.5)]
    metrics = {
        "num_examples": float(actual.shape[0]),
        "kendall_tau": kendall_tau_b(p50, actual),
        "kendall_tau_mean": kendall_tau_b(mean_tokens, actual),
        "spearman_rho": spearman_rho(p50, actual),
        "mae_tokens": mean_absolute_error(p50, actual),
        "mae_mean_tokens": mean_absolute_error(mean_tokens, actual),
        "acc_50": share_within(p50, actual, 50),
        "acc_100": share_within(p50, actual, 100),
        "bucket_accuracy": bucket_accuracy(p50, actual),
        "actual_mean_tokens": float(np.mean(actual)),
        "predicted_mean_tokens": float(np.mean(mean_tokens)),
    }
    for column, level in enumerate(quantile_levels):
        metrics[f"coverage_p{round(level * 100)}"] = float(np.mean(actual <= quantile_tokens[:, column]))
    return {name: round(value, 4) for name, value in metrics.items()}


def coverage_by_decile(
    actual_tokens: np.ndarray,
    quantile_tokens: np.ndarray,
    quantile_levels: tuple[float, ...],
    by: np.ndarray,
    num_bins: int = 10,
) -> list[dict[str, float]]:
    """Quantile coverage within each of num_bins equal-count bins of `by` (stable sort: tied rows keep order).

    Rows are ordered by `by` (true lengths, or predicted p50) and cut into bins of about equal
    size; each bin reports its range of `by`, its row count, and the share of true lengths at or
    below each predicted quantile (ideal: the level, in every bin).
    """
    actual = np.asarray(actual_tokens, np.float64)
    by = np.asarray(by, np.float64)
    order = np.argsort(by, kind="mergesort")
    bins = []
    for chunk in np.array_split(order, min(num_bins, max(len(order), 1))):
        if chunk.size == 0:
            continue
        entry = {
            "num_examples": float(chunk.size),
            "by_low": float(by[chunk].min()),
            "by_high": float(by[chunk].max()),
            "median_actual_tokens": float(np.median(actual[chunk])),
        }
        for column, level in enumerate(quantile_levels):
            entry[f"coverage_p{round(level * 100)}"] = float(np.mean(actual[chunk] <= quantile_tokens[chunk, column]))
        bins.append({name: round(value, 4) for name, value in entry.items()})
    return bins
