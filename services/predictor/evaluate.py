"""Evaluation of a length model against both baselines, per split, plus its prediction latency.

Result shape (stored in metadata.json after training, and in the JSON of `alise predictor eval`):

    {split: {"model": {metric: value}, "baseline_train_median": {...}, "baseline_prompt_length": {...}}}

where split is "all" and every source ("sharegpt", "alpaca_eval:gpt-4o-2024-05-13", ...). The
model is run through its exported ONNX graph, so the figures describe exactly what is served.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from services.predictor.baselines import Baselines
from services.predictor.data import LengthExample
from services.predictor.metrics import coverage_by_decile, prediction_metrics
from services.predictor.model import LengthModel, LengthPredictor, PromptInput
from services.predictor.prompt_kinds import prompt_kinds

MODEL = "model"
BASELINE_TRAIN_MEDIAN = "baseline_train_median"
BASELINE_PROMPT_LENGTH = "baseline_prompt_length"
ALL_SPLIT = "all"
KIND_SEPARATOR = " | "  # a kind split is named "<source> | <kind>", e.g. "sharegpt | code"
MIN_KIND_ROWS = 20  # a (source, kind) with fewer held-out rows gets no split of its own
NUM_DECILES = 10


@dataclass(frozen=True)
class EvalRows:
    """Rows to evaluate on: model inputs and truths, one entry per example."""

    matrix: np.ndarray  # model input rows, float32 [n, columns]
    actual_tokens: np.ndarray  # true output lengths [n]
    prompt_tokens: np.ndarray  # prompt lengths [n] (for the prompt-length baseline)
    generators: tuple[str, ...]  # generator column of each row
    sources: tuple[str, ...]  # split name of each row
    kinds: tuple[frozenset[str], ...] = ()  # prompt kinds of each row (prompt_kinds.py); () = not split by kind
    group_ids: tuple[str, ...] = ()  # split group of each row (training rows only; for out-of-fold folds)


def rows_of_examples(
    matrix: np.ndarray, examples: Sequence[LengthExample], generators: Sequence[str], *, with_group_ids: bool = False
) -> EvalRows:
    """EvalRows of these examples with their model input rows: truths, prompt lengths (at least 1), their
    sources as split names, prompt kinds; group ids only where asked (training rows, for out-of-fold folds)."""
    return EvalRows(
        matrix=matrix,
        actual_tokens=np.array([e.num_output_tokens for e in examples], dtype=np.float64),
        prompt_tokens=np.array([max(e.num_prompt_tokens, 1) for e in examples], dtype=np.float64),
        generators=tuple(generators),
        sources=tuple(e.source for e in examples),
        kinds=tuple(prompt_kinds(e.prompt_text, e.num_prompt_tokens, e.is_conversation_start) for e in examples),
        group_ids=tuple(e.group_id for e in examples) if with_group_ids else (),
    )


@dataclass(frozen=True)
class Predictions:
    """Every predictor's outputs on the rows (kept for the plots)."""

    mean_tokens: dict[str, np.ndarray]  # predictor -> [n]
    quantile_tokens: dict[str, np.ndarray]  # predictor -> [n, levels]


def predict_all(model: LengthModel, baselines: Baselines, rows: EvalRows) -> Predictions:
    """The model's and both baselines' predictions on the rows."""
    model_mean, model_quantiles = model.predict_matrix(rows.matrix)
    median, median_quantiles = baselines.train_median(rows.generators)
    length_mean, length_quantiles = baselines.prompt_length_only(rows.generators, rows.prompt_tokens)
    return Predictions(
        mean_tokens={MODEL: model_mean, BASELINE_TRAIN_MEDIAN: median, BASELINE_PROMPT_LENGTH: length_mean},
        quantile_tokens={
            MODEL: model_quantiles,
            BASELINE_TRAIN_MEDIAN: median_quantiles,
            BASELINE_PROMPT_LENGTH: length_quantiles,
        },
    )


def split_masks(rows: EvalRows) -> dict[str, np.ndarray]:
    """Row masks of every split: "all" (when several sources), each source, each (source, kind)."""
    sources = np.asarray(rows.sources)
    masks: dict[str, np.ndarray] = {}
    if len(set(rows.sources)) > 1:
        masks[ALL_SPLIT] = np.ones(len(sources), bool)
    for source in sorted(set(rows.sources)):
        masks[source] = sources == source
    if rows.kinds:
        from services.predictor.prompt_kinds import PromptKind

        for source in sorted(set(rows.sources)):
            for kind in PromptKind:
                mask = (sources == source) & np.array([kind in row_kinds for row_kinds in rows.kinds], bool)
                if mask.sum() >= MIN_KIND_ROWS:
                    masks[f"{source}{KIND_SEPARATOR}{kind}"] = mask
    return masks


def metrics_by_split(
    rows: EvalRows, predictions: Predictions, quantile_levels: tuple[float, ...]
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics of every predictor over every split of `split_masks`."""
    return {
        split: {
            name: prediction_metrics(
                actual_tokens=rows.actual_tokens[selected],
                mean_tokens=predictions.mean_tokens[name][selected],
                quantile_tokens=predictions.quantile_tokens[name][selected],
                quantile_levels=quantile_levels,
            )
            for name in predictions.mean_tokens
        }
        for split, selected in split_masks(rows).items()
    }


def calibration_by_split(
    rows: EvalRows, predictions: Predictions, quantile_levels: tuple[float, ...]
) -> dict[str, dict[str, dict[str, list[dict[str, float]]]]]:
    """Per source split: each predictor's quantile coverage per decile of true and of predicted length.

    By predicted p50 decile is what a calibrated predictor can get right (coverage given what it
    knows); by true length decile also measures ranking: no predictor covers the longest tenth of
    answers at 90% with a p90 that is right for the other nine tenths unless it ranks them apart.
    """
    p50_column = quantile_levels.index(0.5)
    result: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
    for split, selected in split_masks(rows).items():
        if KIND_SEPARATOR in split:
            continue
        actual = rows.actual_tokens[selected]
        result[split] = {
            name: {
                "by_actual_decile": coverage_by_decile(actual, quantiles[selected], quantile_levels, actual),
                "by_predicted_decile": coverage_by_decile(
                    actual, quantiles[selected], quantile_levels, quantiles[selected, p50_column]
                ),
            }
            for name, quantiles in predictions.quantile_tokens.items()
            if name != BASELINE_TRAIN_MEDIAN  # a constant: its deciles of prediction are one bin
        }
    return result


def measure_latency(predictor: LengthPredictor, prompts: Sequence[PromptInput], *, batch_size: int = 32) -> dict:
    """Prompt -> distribution through the whole served path (tokenize, embed, trees), in this process.

    Single-prompt calls give the latency percentiles; calls of batch_size prompts give throughput.
    """
    if not prompts:
        return {}
    predictor.predict(prompts[:1])  # warm-up: first ONNX Runtime run allocates
    single_ms = []
    for prompt in prompts:
        started = time.perf_counter()
        predictor.predict([prompt])
        single_ms.append((time.perf_counter() - started) * 1e3)
    batch = list(prompts[:batch_size])
    started = time.perf_counter()
    predictor.predict(batch)
    batch_s = time.perf_counter() - started
    return {
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the machine inflates latency
        "num_prompts": len(prompts),
        "single_p50_ms": round(float(np.percentile(single_ms, 50)), 3),
        "single_p90_ms": round(float(np.percentile(single_ms, 90)), 3),
        "single_p99_ms": round(float(np.percentile(single_ms, 99)), 3),
        "batch_size": len(batch),
        "batch_prompts_per_s": round(len(batch) / batch_s, 1),
    }
