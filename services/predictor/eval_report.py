"""Printing and saving an evaluation: a table per split, a JSON file, and a PNG.

PNG (one row of panels per source, at most MAX_PLOTTED_SPLITS): predicted p50 against the true
length (log-log, with y = x), and quantile calibration (nominal level against the share of true
lengths at or below the predicted quantile, for the model and both baselines; ideal is the
diagonal).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from services.predictor.evaluate import EvalRows, Predictions

MAX_PLOTTED_SPLITS = 10
_COLUMNS = (
    ("num_examples", "n", "{:.0f}"),
    ("kendall_tau", "tau", "{:.3f}"),
    ("spearman_rho", "rho", "{:.3f}"),
    ("mae_tokens", "MAE", "{:.0f}"),
    ("acc_50", "Acc50", "{:.3f}"),
    ("acc_100", "Acc100", "{:.3f}"),
    ("bucket_accuracy", "bucket", "{:.3f}"),
    ("coverage_p10", "cov10", "{:.2f}"),
    ("coverage_p50", "cov50", "{:.2f}"),
    ("coverage_p90", "cov90", "{:.2f}"),
)


def _cell(value: float, pattern: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def format_table(metrics: dict[str, dict[str, dict[str, float]]]) -> str:
    """One block per split: a row per predictor, a column per headline metric."""
    lines = []
    header = f"  {'predictor':<24}" + "".join(f"{title:>8}" for _, title, _ in _COLUMNS)
    for split, by_predictor in metrics.items():
        lines += [f"{split}:", header]
        for predictor, values in by_predictor.items():
            cells = "".join(f"{_cell(values.get(name, math.nan), pattern):>8}" for name, _, pattern in _COLUMNS)
            lines.append(f"  {predictor:<24}{cells}")
    return "\n".join(lines)


def format_calibration(calibration: dict, predictor: str = "model") -> str:
    """p10 / p90 coverage of one predictor per decile of true and of predicted length, per split."""
    lines = []
    for split, by_predictor in calibration.items():
        if predictor not in by_predictor:
            continue
        for grouping, title in (("by_actual_decile", "true length"), ("by_predicted_decile", "predicted p50")):
            cells = " ".join(
                f"{entry['coverage_p10']:.2f}/{entry['coverage_p90']:.2f}"
                for entry in by_predictor[predictor][grouping]
            )
            lines.append(f"{split}: {predictor} p10/p90 coverage by {title} decile: {cells}")
    return "\n".join(lines)


def _json_safe(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_json(path: Path, report: dict) -> None:
    """The report as JSON (nan written as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(report), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_png(path: Path, rows: EvalRows, predictions: Predictions, quantile_levels: tuple[float, ...]) -> bool:
    """Scatter and calibration panels per split; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    splits = sorted(set(rows.sources))[:MAX_PLOTTED_SPLITS]
    figure, axes = plt.subplots(len(splits), 2, figsize=(11, 3.6 * len(splits)), squeeze=False)
    sources = np.asarray(rows.sources)
    p50_column = quantile_levels.index(0.5)
    for (scatter, calibration), split in zip(axes, splits):
        selected = sources == split
        actual = rows.actual_tokens[selected]
        predicted = predictions.quantile_tokens["model"][selected, p50_column]
        scatter.scatter(actual, predicted, s=4, alpha=0.35)
        limits = [1, max(float(actual.max()), float(predicted.max()), 10.0)]
        scatter.plot(limits, limits, color="black", linewidth=0.8)
        scatter.set(
            xscale="log",
            yscale="log",
            xlabel="actual output tokens",
            ylabel="predicted p50 tokens",
            title=f"{split}: predicted vs actual",
        )
        for name, quantiles in predictions.quantile_tokens.items():
            coverage = [float(np.mean(actual <= quantiles[selected, column])) for column in range(len(quantile_levels))]
            calibration.plot(quantile_levels, coverage, marker="o", label=name)
        calibration.plot([0, 1], [0, 1], color="black", linewidth=0.8)
        calibration.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="quantile level",
            ylabel="share of actual <= predicted",
            title=f"{split}: quantile calibration",
        )
        calibration.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True
