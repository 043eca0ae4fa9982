"""Calibration rows for the calibration step (calibration.py): quantiles of training rows from trees
that did not fit them.

The early-stopping slice alone (10% of the training groups) leaves ~60 ShareGPT rows per bin, too
few to put p10 / p90 within a few points of nominal. So the quantile trees are refitted
NUM_CALIBRATION_FOLDS times, each without one fold of the training groups (data.group_fold, a
different seed than the text heads' folds), and predict that fold: every training row gets
quantiles from trees that never saw its group. Trees fitted on (k-1)/k of the rows are a little
worse than the final ones, so the offsets err on the wide side.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from services.predictor import data
from services.predictor.evaluate import EvalRows
from services.predictor.heads import TreeSettings, fit_heads, xgboost_tokens

NUM_CALIBRATION_FOLDS = 3
FOLD_SEED_OFFSET = 7  # folds drawn with seed + this, unrelated to the stacking folds


def out_of_fold_quantiles(
    settings: TreeSettings, fit: EvalRows, valid: EvalRows, quantile_names: list[str], progress: Callable[[str], None]
) -> np.ndarray:
    """float64 [len(fit rows), len(quantile_names)]: each fit row's quantiles in tokens from trees fitted without
    its fold (early stopping on the valid rows, as the final trees)."""
    started = time.perf_counter()
    folds = np.array(
        [
            data.group_fold(group, num_folds=NUM_CALIBRATION_FOLDS, seed=settings.seed + FOLD_SEED_OFFSET)
            for group in fit.group_ids
        ]
    )
    result = np.zeros((len(folds), len(quantile_names)))
    for fold in range(NUM_CALIBRATION_FOLDS):
        inside = folds == fold
        if not inside.any() or inside.all():
            continue
        heads = fit_heads(
            settings,
            (fit.matrix[~inside], fit.actual_tokens[~inside]),
            (valid.matrix, valid.actual_tokens),
            lambda line: None,
        )
        predicted = xgboost_tokens(heads, fit.matrix[inside])
        result[inside] = np.stack([predicted[name] for name in quantile_names], axis=1)
    progress(
        f"calibration: out-of-fold quantile trees on {len(folds)} rows ({NUM_CALIBRATION_FOLDS} folds) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return result
