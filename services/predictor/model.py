"""The served length model: prompt -> output-length distribution, through ONNX Runtime.

Only onnxruntime and numpy are needed at serving time (no xgboost, no onnx package). One `predict`
call extracts features for the whole batch and runs the graph once.

Invariants of every `LengthDistribution` returned:
- quantiles are in increasing level order, with num_tokens non-decreasing (p10 <= p50 <= p90)
  even where independently trained heads cross;
- every number of tokens is >= 1 (a request produces at least one token, EOS included).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from services.predictor import features
from services.predictor.artifact import (
    INPUT_NAME,
    MEAN_OUTPUT_NAME,
    ONNX_FILE_NAME,
    ModelMetadata,
    quantile_output_name,
    read_metadata,
)

log = logging.getLogger(__name__)

MIN_TOKENS = 1.0  # floor of every predicted length


@dataclass(frozen=True)
class PromptInput:
    """One prompt to predict for (the domain form of alise.v1.PredictionInput)."""

    prompt_text: str  # the prompt
    num_prompt_tokens: int  # its length in the served model's tokens; 0 = not tokenized
    served_model: str = ""  # served model name ("" = default); one model serves all for now


@dataclass(frozen=True)
class LengthQuantile:
    """One point of a predicted output-length distribution."""

    level: float  # cumulative probability in (0, 1)
    num_tokens: float  # output length in tokens at that probability (>= 1)


@dataclass(frozen=True)
class LengthDistribution:
    """Predicted output length of one prompt."""

    mean_tokens: float  # expected output length in tokens (>= 1)
    quantiles: tuple[LengthQuantile, ...]  # increasing levels, non-decreasing num_tokens
    model_version: str  # version of the model that produced it


def _session_providers(allow_cuda: bool) -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if allow_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_monotone(quantile_tokens: np.ndarray) -> np.ndarray:
    """Floors at MIN_TOKENS and makes each row non-decreasing (running max over the levels).

    The running max is the smallest change that restores order: a head that dips below a lower
    level's head is lifted to it, and no head is lowered.
    """
    return np.maximum.accumulate(np.maximum(quantile_tokens, MIN_TOKENS), axis=1)


class LengthModel:
    """An ONNX length model loaded from a model directory (see artifact.py for the layout)."""

    def __init__(self, model_dir: Path, *, intra_op_threads: int = 1, allow_cuda: bool = True) -> None:
        import onnxruntime

        self.metadata: ModelMetadata = read_metadata(model_dir)
        self._check_features(model_dir)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: shape-inference warnings are noise here
        providers = _session_providers(allow_cuda)
        self._session = onnxruntime.InferenceSession(
            str(model_dir / ONNX_FILE_NAME), sess_options=options, providers=providers
        )
        self._output_names = [MEAN_OUTPUT_NAME] + [
            quantile_output_name(level) for level in self.metadata.quantile_levels
        ]
        log.info(
            "loaded length model %s from %s (providers %s)",
            self.model_version,
            model_dir,
            self._session.get_providers(),
        )

    def _check_features(self, model_dir: Path) -> None:
        if self.metadata.feature_version != features.FEATURE_VERSION:
            raise ValueError(
                f"model in {model_dir} was trained with features {self.metadata.feature_version!r}, "
                f"this code computes {features.FEATURE_VERSION!r}: retrain it"
            )
        if self.metadata.feature_names != features.FEATURE_NAMES:
            raise ValueError(f"model in {model_dir} expects different feature names than this code")

    @property
    def model_version(self) -> str:
        return self.metadata.model_version

    @property
    def providers(self) -> list[str]:
        """Execution providers of the ONNX Runtime session, preferred first."""
        return list(self._session.get_providers())

    def predict_matrix(self, feature_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean [n], quantiles [n, num_levels]) in tokens, floored and monotone, from features."""
        feature_matrix = np.ascontiguousarray(feature_matrix, dtype=np.float32)
        outputs = self._session.run(self._output_names, {INPUT_NAME: feature_matrix})
        mean_tokens = np.maximum(outputs[0].reshape(-1), MIN_TOKENS)
        quantile_tokens = np.concatenate([output.reshape(-1, 1) for output in outputs[1:]], axis=1)
        return mean_tokens, make_monotone(quantile_tokens)

    def predict(self, inputs: Sequence[PromptInput]) -> list[LengthDistribution]:
        """One distribution per input, same order. Blocking (ONNX Runtime): call off the event loop."""
        if not inputs:
            return []
        matrix = features.extract_feature_matrix(
            [(item.prompt_text, item.num_prompt_tokens) for item in inputs]
        )
        mean_tokens, quantile_tokens = self.predict_matrix(matrix)
        levels = self.metadata.quantile_levels
        return [
            LengthDistribution(
                mean_tokens=float(mean_tokens[row]),
                quantiles=tuple(
                    LengthQuantile(level, float(quantile_tokens[row, column]))
                    for column, level in enumerate(levels)
                ),
                model_version=self.model_version,
            )
            for row in range(len(inputs))
        ]
