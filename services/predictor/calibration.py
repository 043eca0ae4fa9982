"""Calibration step on the trees' quantiles: p10 / p90 shifted per bin of the predicted p50.

The quantile trees are fitted on all training rows at once; their p10 / p90 come out too wide or
too narrow for some ranges of the prediction (short predicted answers get a p10 too high, long
ones a p90 too low: see docs/benchmarks/predictor). This step measures, on calibration rows that
the trees predicting them did not fit (out-of-fold trees on the training rows, train.py), the
log-scale residuals of each quantile in NUM_BINS equal-count bins of the predicted log1p(p50), and
shifts that quantile by the residual's own quantile in its bin (conformalized quantile regression,
one offset per bin and level):

    q'(x) = expm1(log1p(q(x)) + offset[family][level][bin(log1p(p50(x)))])

Generators differ in their spread (AlpacaEval models vs ChatGPT vs a small served model capped at
max_tokens), so each generator family (`family_of`) with at least MIN_FAMILY_ROWS calibration rows
gets its own bins; other rows use the pooled table (POOLED).

The p50 is never changed, so the ranking (Kendall's tau of p50) is exactly the trees'. Serving
applies the table in numpy after the ONNX graph (model.py); it lives in metadata.json and is part
of the model version's hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

NUM_BINS = 10  # bins of predicted p50 (deciles of the calibration rows)
MIN_ROWS_PER_BIN = 50  # fewer calibration rows than NUM_BINS x this: fewer, larger bins
MIN_FAMILY_ROWS = 500  # a generator family with fewer calibration rows uses the pooled table
CALIBRATED_LEVELS: tuple[float, ...] = (0.1, 0.9)  # the tails; p50 is the ranking score and stays
POOLED = "*"  # the table of all calibration rows together


def family_of(generator: str) -> str:
    """ "alpaca_eval:gpt-4o" -> "alpaca_eval"; "sharegpt" and "served:<model>" are their own family."""
    prefix, separator, _ = generator.partition(":")
    return prefix if separator and prefix == "alpaca_eval" else generator


@dataclass(frozen=True)
class BinOffsets:
    """Offsets on the log1p scale per (level, bin of log1p(predicted p50))."""

    log_p50_edges: list[float]  # inner bin edges (increasing); bin i = values in (edges[i-1], edges[i]]
    offsets: dict[str, list[float]]  # str(level) -> one log1p offset per bin (len(edges) + 1)

    def shift(self, quantile_tokens: np.ndarray, quantile_levels: tuple[float, ...]) -> np.ndarray:
        result = np.array(quantile_tokens, dtype=np.float64, copy=True)
        bins = np.searchsorted(
            np.asarray(self.log_p50_edges), np.log1p(result[:, quantile_levels.index(0.5)]), side="left"
        )
        for level, offsets in self.offsets.items():
            column = quantile_levels.index(float(level))
            result[:, column] = np.expm1(np.log1p(result[:, column]) + np.asarray(offsets)[bins])
        return result


@dataclass(frozen=True)
class QuantileCalibration:
    """A BinOffsets table per generator family, POOLED for the rest."""

    tables: dict[str, BinOffsets]  # family (or POOLED) -> its table

    def to_dict(self) -> dict[str, object]:
        return {
            family: {"log_p50_edges": table.log_p50_edges, "offsets": table.offsets}
            for family, table in sorted(self.tables.items())
        }

    @classmethod
    def from_dict(cls, raw: dict) -> "QuantileCalibration":
        return cls(
            {
                family: BinOffsets(
                    [float(edge) for edge in table["log_p50_edges"]],
                    {level: [float(v) for v in values] for level, values in table["offsets"].items()},
                )
                for family, table in raw.items()
            }
        )

    def apply(
        self, quantile_tokens: np.ndarray, quantile_levels: tuple[float, ...], generators: Sequence[str]
    ) -> np.ndarray:
        """The quantiles [n, levels] with the calibrated levels shifted (row i predicts for generators[i])."""
        result = np.asarray(quantile_tokens, dtype=np.float64).copy()
        families = np.asarray([family_of(name) if family_of(name) in self.tables else POOLED for name in generators])
        for family in np.unique(families):
            rows = families == family
            result[rows] = self.tables[family].shift(result[rows], quantile_levels)
        return result.astype(np.float32)


def _fit_table(actual: np.ndarray, log_quantiles: np.ndarray, quantile_levels: tuple[float, ...]) -> BinOffsets:
    log_p50 = log_quantiles[:, quantile_levels.index(0.5)]
    num_bins = max(1, min(NUM_BINS, len(actual) // MIN_ROWS_PER_BIN))
    edges = np.unique(np.round(np.quantile(log_p50, np.linspace(0, 1, num_bins + 1)[1:-1]), 6))
    bins = np.searchsorted(edges, log_p50, side="left")
    offsets: dict[str, list[float]] = {}
    for level in CALIBRATED_LEVELS:
        residual = actual - log_quantiles[:, quantile_levels.index(level)]
        offsets[str(level)] = [
            round(float(np.quantile(residual[bins == index], level, method="inverted_cdf")), 6)
            if np.any(bins == index)
            else 0.0
            for index in range(len(edges) + 1)
        ]
    return BinOffsets([float(edge) for edge in edges], offsets)


def fit_calibration(
    actual_tokens: np.ndarray,
    quantile_tokens: np.ndarray,
    quantile_levels: tuple[float, ...],
    generators: Sequence[str],
) -> QuantileCalibration:
    """Per-family (and pooled) per-bin offsets that make each calibrated level's coverage nominal on these rows."""
    actual = np.log1p(np.asarray(actual_tokens, np.float64))
    log_quantiles = np.log1p(np.asarray(quantile_tokens, np.float64))
    families = np.asarray([family_of(name) for name in generators])
    tables = {POOLED: _fit_table(actual, log_quantiles, quantile_levels)}
    for family in np.unique(families):
        rows = families == family
        if rows.sum() >= MIN_FAMILY_ROWS:
            tables[str(family)] = _fit_table(actual[rows], log_quantiles[rows], quantile_levels)
    return QuantileCalibration(tables)
