"""Offline training of the length model: data -> features -> XGBoost heads -> ONNX -> artifact.

Heads: the mean (Tweedie regression on tokens, capped at MEAN_TARGET_CAP_TOKENS so one 37k-token
outlier cannot drag it) and one quantile regression per level on log1p(tokens) (quantiles commute
with monotone transforms, and the log scale suits lengths spanning 1 to 10^4). Early stopping
uses a validation slice of the training groups; the held-out groups are touched only for the
final metrics, computed on the exported ONNX graph so they describe exactly what is served.

Deterministic for a given seed, data and thread count: split, subsample and XGBoost are seeded,
and the artifact contains no timestamp.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from services.predictor import data, features
from services.predictor.artifact import (
    MEAN_OUTPUT_NAME,
    QUANTILE_LEVELS,
    ModelMetadata,
    quantile_output_name,
    write_artifact,
)
from services.predictor.metrics import length_metrics

if TYPE_CHECKING:
    from services.predictor.model import LengthModel

MEAN_TARGET_CAP_TOKENS = 8192  # longer answers count as this long when fitting the mean head
VALIDATION_FRACTION = 0.1  # share of training groups used for early stopping
EARLY_STOPPING_ROUNDS = 30
ONNX_TOLERANCE_RELATIVE = 1e-3  # ONNX vs XGBoost predictions must agree this closely


@dataclass(frozen=True)
class TrainSettings:
    """What `train` reads, how it splits, and how big the model may grow."""

    data_dir: Path  # the shared data folder (README there)
    out_dir: Path  # where model.onnx and metadata.json are written
    seed: int = 0  # seeds split, subsampling and XGBoost
    generators: tuple[str, ...] = ()  # AlpacaEval generators whose answers are added
    use_sharegpt: bool = True  # include the ShareGPT first turns
    heldout_fraction: float = 0.2  # share of prompt groups held out for the printed metrics
    max_examples: int = 0  # subsample to at most this many examples before splitting; 0 = all
    num_threads: int = 2  # XGBoost threads
    max_trees: int = 300  # boosting rounds per head (fewer with early stopping)
    max_depth: int = 6  # depth of each tree

    def __post_init__(self) -> None:
        if not self.use_sharegpt and not self.generators:
            raise ValueError("nothing to train on: ShareGPT is off and no --generator was given")
        if self.max_trees < 1 or self.max_depth < 1 or self.num_threads < 1:
            raise ValueError("max_trees, max_depth and num_threads must be >= 1")


def _xgb_params(settings: TrainSettings) -> dict[str, object]:
    return {
        "tree_method": "hist",
        "max_depth": settings.max_depth,
        "eta": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 5.0,
        "nthread": settings.num_threads,
        "seed": settings.seed,
    }


def load_examples(settings: TrainSettings) -> tuple[list[data.LengthExample], dict[str, str]]:
    """Examples of every selected source, and the sha256 of each data file read."""
    examples: list[data.LengthExample] = []
    used_files: list[str] = []
    if settings.use_sharegpt:
        examples += data.load_sharegpt(settings.data_dir)
        used_files.append(data.SHAREGPT_FILE)
    if settings.generators:
        examples += data.load_alpaca_eval(settings.data_dir, settings.generators)
        used_files.append(data.ALPACA_EVAL_FILE)
    hashes = {name: data.file_sha256(settings.data_dir / name) for name in used_files}
    return examples, hashes


def _matrix(examples: Sequence[data.LengthExample]) -> tuple[np.ndarray, np.ndarray]:
    prompts = [(example.prompt_text, example.num_prompt_tokens) for example in examples]
    targets = np.array([example.num_output_tokens for example in examples], dtype=np.float64)
    return features.extract_feature_matrix(prompts), targets


def _fit_heads(
    settings: TrainSettings,
    fit: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    progress: Callable[[str], None],
) -> list:
    """Trains the mean head and one head per quantile level; returns export.Head objects."""
    import xgboost

    from services.predictor.export import Head, HeadTransform

    specs = [(MEAN_OUTPUT_NAME, {"objective": "reg:tweedie", "tweedie_variance_power": 1.5}, False)]
    specs += [
        (quantile_output_name(level), {"objective": "reg:quantileerror", "quantile_alpha": level}, True)
        for level in QUANTILE_LEVELS
    ]
    heads = []
    for output_name, objective, log_scale in specs:
        started = time.perf_counter()

        def target(y: np.ndarray, log_scale: bool = log_scale) -> np.ndarray:
            return np.log1p(y) if log_scale else np.minimum(y, MEAN_TARGET_CAP_TOKENS)

        fit_matrix = xgboost.DMatrix(fit[0], label=target(fit[1]))
        valid_matrix = xgboost.DMatrix(valid[0], label=target(valid[1]))
        booster = xgboost.train(
            {**_xgb_params(settings), **objective},
            fit_matrix,
            num_boost_round=settings.max_trees,
            evals=[(valid_matrix, "valid")],
            early_stopping_rounds=EARLY_STOPPING_ROUNDS,
            verbose_eval=False,
        )
        booster = booster[: booster.best_iteration + 1]
        transform = HeadTransform.EXPM1 if log_scale else HeadTransform.IDENTITY
        heads.append(Head(output_name, booster, transform))
        progress(
            f"  head {output_name}: {booster.num_boosted_rounds()} trees "
            f"in {time.perf_counter() - started:.1f} s"
        )
    return heads


def _xgboost_tokens(heads: Sequence, matrix: np.ndarray) -> dict[str, np.ndarray]:
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

    from services.predictor.artifact import INPUT_NAME

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    expected = _xgboost_tokens(heads, matrix)
    outputs = session.run(list(expected), {INPUT_NAME: np.ascontiguousarray(matrix, np.float32)})
    worst = 0.0
    for (name, want), got in zip(expected.items(), outputs):
        relative = np.abs(got.reshape(-1) - want) / np.maximum(np.abs(want), 1.0)
        worst = max(worst, float(np.max(relative, initial=0.0)))
    if worst > ONNX_TOLERANCE_RELATIVE:
        raise RuntimeError(f"ONNX export differs from XGBoost by {worst:.2e} (relative)")
    return worst


def evaluate(
    model: "LengthModel",
    examples: Sequence[data.LengthExample],
    *,
    train_median_tokens: float,
    matrix: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Held-out metrics of a loaded LengthModel: over all examples and per source."""
    if matrix is None:
        matrix, _ = _matrix(examples)
    actual = np.array([example.num_output_tokens for example in examples], dtype=np.float64)
    prompt_tokens = np.array([example.num_prompt_tokens for example in examples], dtype=np.float64)
    sources = np.array([example.source for example in examples])
    mean_tokens, quantile_tokens = model.predict_matrix(matrix)
    results = {}
    for split_name in ["all", *sorted(set(sources))]:
        rows = np.ones(len(examples), bool) if split_name == "all" else sources == split_name
        results[split_name] = length_metrics(
            actual_tokens=actual[rows],
            mean_tokens=mean_tokens[rows],
            quantile_tokens=quantile_tokens[rows],
            quantile_levels=model.metadata.quantile_levels,
            prompt_tokens=prompt_tokens[rows],
            train_median_tokens=train_median_tokens,
        )
    return results


def _metadata(
    settings: TrainSettings,
    heads: Sequence,
    onnx_bytes: bytes,
    data_hashes: dict[str, str],
    sources: set[str],
    training_facts: dict[str, object],
) -> ModelMetadata:
    """Metadata of a freshly exported model, before its held-out metrics are known."""
    import xgboost

    onnx_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    return ModelMetadata(
        model_version=f"lenpred-{features.FEATURE_VERSION}-{onnx_sha256[:12]}",
        feature_version=features.FEATURE_VERSION,
        feature_names=features.FEATURE_NAMES,
        quantile_levels=QUANTILE_LEVELS,
        onnx_sha256=onnx_sha256,
        seed=settings.seed,
        data_files_sha256=data_hashes,
        sources=tuple(sorted(sources)),
        heldout_metrics={},
        training={
            **training_facts,
            "heldout_fraction": settings.heldout_fraction,
            "max_examples": settings.max_examples,
            "num_trees": {head.output_name: head.booster.num_boosted_rounds() for head in heads},
            "xgboost_params": _xgb_params(settings) | {"max_trees": settings.max_trees},
            "mean_target_cap_tokens": MEAN_TARGET_CAP_TOKENS,
            "xgboost_version": xgboost.__version__,
        },
    )


def run_training(settings: TrainSettings, progress: Callable[[str], None] = print) -> ModelMetadata:
    """Trains, exports, checks and writes the artifact; returns its metadata (metrics included)."""
    from services.predictor.export import merge_heads
    from services.predictor.model import LengthModel

    started = time.perf_counter()
    examples, data_hashes = load_examples(settings)
    examples = data.subsample(examples, max_examples=settings.max_examples, seed=settings.seed)
    train, heldout = data.split_by_group(examples, heldout_fraction=settings.heldout_fraction, seed=settings.seed)
    fit, valid = data.split_by_group(train, heldout_fraction=VALIDATION_FRACTION, seed=settings.seed + 1)
    progress(f"{len(examples)} examples: fit {len(fit)}, early-stopping {len(valid)}, held-out {len(heldout)}")
    fit_xy, valid_xy, heldout_xy = _matrix(fit), _matrix(valid), _matrix(heldout)
    progress(f"{features.NUM_FEATURES} features ({features.FEATURE_VERSION}) "
             f"in {time.perf_counter() - started:.1f} s")
    heads = _fit_heads(settings, fit_xy, valid_xy, progress)
    onnx_bytes = merge_heads(heads, features.NUM_FEATURES).SerializeToString()
    train_median_tokens = float(np.median(np.concatenate([fit_xy[1], valid_xy[1]])))
    facts = {
        "num_examples": {"fit": len(fit), "early_stopping": len(valid), "heldout": len(heldout)},
        "train_median_tokens": train_median_tokens,
        "onnx_vs_xgboost_max_relative_difference": check_onnx_matches_xgboost(onnx_bytes, heads, heldout_xy[0]),
    }
    sources = {example.source for example in examples}
    metadata = _metadata(settings, heads, onnx_bytes, data_hashes, sources, facts)
    write_artifact(settings.out_dir, onnx_bytes, metadata)
    model = LengthModel(settings.out_dir, intra_op_threads=settings.num_threads, allow_cuda=False)
    metrics = evaluate(model, heldout, train_median_tokens=train_median_tokens, matrix=heldout_xy[0])
    metadata = dataclasses.replace(metadata, heldout_metrics=metrics)
    write_artifact(settings.out_dir, onnx_bytes, metadata)
    progress(f"wrote {metadata.model_version} ({len(onnx_bytes) / 1e6:.2f} MB) to {settings.out_dir} "
             f"in {time.perf_counter() - started:.1f} s")
    return metadata
