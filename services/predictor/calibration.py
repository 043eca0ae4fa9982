"""Calibration step on the trees' quantiles: p10 / p90 shifted per bin of the predicted p50.

The quantile trees are fitted on all training rows at once; their p10 / p90 come out too wide or
too narrow for some ranges of the prediction (short predicted answers get a p10 too high, long
ones a p90 too low: see docs/benchmarks/predictor). This step measures, on calibration rows the
trees did not fit (the early-stopping slice of the training groups, whose encoder and text-head
columns are out of fold, as served), the log-scale residuals of each quantile in NUM_BINS
equal-count bins of the predicted log1p(p50), and shifts that quantile by the residual's own
quantile in its bin (conformalized quantile regression, one offset per bin and level):

    q'(x) = expm1(log1p(q(x)) + offset[level][bin(log1p(p50(x)))])

The p50 is never changed, so the ranking (Kendall's tau of p50) is exactly the trees'. Serving
applies the table in numpy after the ONNX graph (model.py); it lives in metadata.json and is part
of the model version's hash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

NUM_BINS = 10  # bins of predicted p50 (deciles of the calibration rows)
MIN_ROWS_PER_BIN = 30  # fewer calibration rows than NUM_BINS x this: fewer, larger bins
CALIBRATED_LEVELS: tuple[float, ...] = (0.1, 0.9)  # the tails; p50 is the ranking score and stays


@dataclass(frozen=True)
class QuantileCalibration:
    """Offsets on the log1p scale per (level, bin of log1p(predicted p50))."""

    log_p50_edges: list[float]  # inner bin edges (increasing); bin i = values in (edges[i-1], edges[i]]
    offsets: dict[str, list[float]]  # str(level) -> one log1p offset per bin (len(edges) + 1)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "QuantileCalibration":
        return cls([float(edge) for edge in raw["log_p50_edges"]],
                   {level: [float(value) for value in values] for level, values in raw["offsets"].items()})

    def apply(self, quantile_tokens: np.ndarray, quantile_levels: tuple[float, ...]) -> np.ndarray:
        """The quantiles [n, levels] with the calibrated levels shifted; other columns unchanged."""
        result = np.array(quantile_tokens, dtype=np.float64, copy=True)
        bins = np.searchsorted(np.asarray(self.log_p50_edges), np.log1p(result[:, quantile_levels.index(0.5)]),
                               side="left")
        for level, offsets in self.offsets.items():
            column = quantile_levels.index(float(level))
            result[:, column] = np.expm1(np.log1p(result[:, column]) + np.asarray(offsets)[bins])
        return result.astype(np.float32)


def fit_calibration(actual_tokens: np.ndarray, quantile_tokens: np.ndarray,
                    quantile_levels: tuple[float, ...]) -> QuantileCalibration:
    """Per-bin offsets that make each calibrated level's coverage nominal on these rows."""
    actual = np.log1p(np.asarray(actual_tokens, np.float64))
    log_quantiles = np.log1p(np.asarray(quantile_tokens, np.float64))
    log_p50 = log_quantiles[:, quantile_levels.index(0.5)]
    num_bins = max(1, min(NUM_BINS, len(actual) // MIN_ROWS_PER_BIN))
    edges = np.unique(np.quantile(log_p50, np.linspace(0, 1, num_bins + 1)[1:-1]))
    bins = np.searchsorted(edges, log_p50, side="left")
    offsets: dict[str, list[float]] = {}
    for level in CALIBRATED_LEVELS:
        residual = actual - log_quantiles[:, quantile_levels.index(level)]
        offsets[str(level)] = [
            round(float(np.quantile(residual[bins == index], level, method="inverted_cdf")), 6)
            if np.any(bins == index) else 0.0
            for index in range(len(edges) + 1)
        ]
    return QuantileCalibration([round(float(edge), 6) for edge in edges], offsets)
