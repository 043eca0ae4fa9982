"""XGBoost heads of the length model: one mean head and one quantile head per level.

- mean: Tweedie regression on tokens, capped at MEAN_TARGET_CAP_TOKENS so one 37k-token outlier
  cannot drag it;
- quantiles: quantile regression on log1p(tokens) (quantiles commute with monotone transforms,
  and the log scale suits lengths spanning 1 to 10^4); the graph applies expm1.

Early stopping watches a validation slice of the training groups; the held-out groups are never
seen here. `check_onnx_matches_xgboost` guards the export: a graph that disagrees with XGBoost is
never shipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from services.predictor.artifact import INPUT_NAME, MEAN_OUTPUT_NAME, QUANTILE_LEVELS, quantile_output_name

MEAN_TARGET_CAP_TOKENS = 8192  # longer answers count as this long when fitting the mean head
EARLY_STOPPING_ROUNDS = 40
ONNX_TOLERANCE_RELATIVE = 1e-3  # ONNX vs XGBoost predictions must agree this closely


@dataclass(frozen=True)
class TreeSettings:
    """Size and regularization of each head's trees."""

    seed: int  # XGBoost seed (row and column subsampling)
    num_threads: int  # XGBoost threads
    max_trees: int  # boosting rounds per head (fewer with early stopping)
    max_depth: int  # depth of each tree
    learning_rate: float = 0.05  # shrinkage per tree
    colsample_bytree: float = 0.5  # share of columns each tree sees (many embedding columns)

    def params(self) -> dict[str, object]:
        return {
            "tree_method": "hist",
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": 0.8,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": 5.0,
            "nthread": self.num_threads,
            "seed": self.seed,
        }


def _head_specs() -> list[tuple[str, dict[str, object], bool]]:
    """(output name, objective params, fitted on log1p) of every head, mean first."""
    specs = [(MEAN_OUTPUT_NAME, {"objective": "reg:tweedie", "tweedie_variance_power": 1.5}, False)]
    specs += [
        (quantile_output_name(level), {"objective": "reg:quantileerror", "quantile_alpha": level}, True)
        for level in QUANTILE_LEVELS
    ]
    return specs


def fit_heads(
    settings: TreeSettings,
    fit: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    progress: Callable[[str], None],
) -> list:
    """Trains every head on (matrix, tokens) pairs; returns export.Head objects."""
    import xgboost

    from services.predictor.export import Head, HeadTransform

    heads = []
    for output_name, objective, log_scale in _head_specs():
        started = time.perf_counter()

        def target(tokens: np.ndarray, log_scale: bool = log_scale) -> np.ndarray:
            return np.log1p(tokens) if log_scale else np.minimum(tokens, MEAN_TARGET_CAP_TOKENS)

        booster = xgboost.train(
            {**settings.params(), **objective},
            xgboost.DMatrix(fit[0], label=target(fit[1])),
            num_boost_round=settings.max_trees,
            evals=[(xgboost.DMatrix(valid[0], label=target(valid[1])), "valid")],
            early_stopping_rounds=EARLY_STOPPING_ROUNDS,
            verbose_eval=False,
        )
        booster = booster[: booster.best_iteration + 1]
        heads.append(Head(output_name, booster, HeadTransform.EXPM1 if log_scale else HeadTransform.IDENTITY))
        progress(f"  head {output_name}: {booster.num_boosted_rounds()} trees in {time.perf_counter() - started:.1f} s")
    return heads


def xgboost_tokens(heads: Sequence, matrix: np.ndarray) -> dict[str, np.ndarray]:
    """What each head predicts in tokens when run by XGBoost itself (to check the ONNX export)."""
    import xgboost

    from services.predictor.export import HeadTransform

    dmatrix = xgboost.DMatrix(matrix)
    result = {}
    for head in heads:
        raw = head.booster.predict(dmatrix)
        result[head.output_name] = np.expm1(raw) if head.transform is HeadTransform.EXPM1 else raw
    return result


def check_onnx_matches_xgboost(onnx_bytes: bytes, heads: Sequence, matrix: np.ndarray) -> float:
    """Largest relative difference between the ONNX graph and XGBoost over all heads and rows.

    Raises RuntimeError above ONNX_TOLERANCE_RELATIVE: a broken export must never be shipped.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    expected = xgboost_tokens(heads, matrix)
    outputs = session.run(list(expected), {INPUT_NAME: np.ascontiguousarray(matrix, np.float32)})
    worst = 0.0
    for want, got in zip(expected.values(), outputs):
        relative = np.abs(got.reshape(-1) - want) / np.maximum(np.abs(want), 1.0)
        worst = max(worst, float(np.max(relative, initial=0.0)))
    if worst > ONNX_TOLERANCE_RELATIVE:
        raise RuntimeError(f"ONNX export differs from XGBoost by {worst:.2e} (relative)")
    return worst
