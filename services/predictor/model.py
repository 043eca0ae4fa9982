"""The served length model: prompt -> output-length distribution, through ONNX Runtime.

Only onnxruntime, tokenizers and numpy are needed at serving time (no xgboost, no torch). One
`predict` call builds the input rows of the whole batch (lexical features, text heads over the
prompt embedding and hashed terms, generator one-hot: model_inputs.py) and runs the tree graph
once; the embedding graph runs once per prompt (see embedding.py for why).

Invariants of every `LengthDistribution` returned:
- quantiles are in increasing level order, with num_tokens non-decreasing (p10 <= p50 <= p90)
  even where independently trained heads cross;
- every number of tokens is >= 1 (a request produces at least one token, EOS included).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from services.predictor.artifact import (
    INPUT_NAME,
    MEAN_OUTPUT_NAME,
    ONNX_FILE_NAME,
    TEXT_HEADS_FILE_NAME,
    ModelMetadata,
    quantile_output_name,
    read_metadata,
)
from services.predictor.calibration import QuantileCalibration
from services.predictor.embedding import PromptEmbedder
from services.predictor.model_inputs import (
    CONTENT_INPUT_VERSION,
    INPUT_VERSIONS,
    InputLayout,
    build_matrix,
    lexical_block,
)
from services.predictor.onnx_session import make_session
from services.predictor.text_heads import TextHeads

log = logging.getLogger(__name__)

MIN_TOKENS = 1.0  # floor of every predicted length


@dataclass(frozen=True)
class PromptInput:
    """One prompt to predict for (the domain form of alise.v1.PredictionInput)."""

    prompt_text: str  # the prompt
    num_prompt_tokens: int  # its length in the served model's tokens; 0 = not tokenized
    served_model: str = ""  # served model name ("" = the model's default generator)


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


def make_monotone(quantile_tokens: np.ndarray) -> np.ndarray:
    """Floors at MIN_TOKENS and makes each row non-decreasing (running max over the levels).

    The running max is the smallest change that restores order: a head that dips below a lower
    level's head is lifted to it, and no head is lowered.
    """
    return np.maximum.accumulate(np.maximum(quantile_tokens, MIN_TOKENS), axis=1)


def layout_of(metadata: ModelMetadata) -> InputLayout:
    """The input layout a model was trained with; ValueError when this code builds other columns."""
    if metadata.input_version not in INPUT_VERSIONS:
        raise ValueError(
            f"model was trained with inputs {metadata.input_version!r}, "
            f"this code builds {list(INPUT_VERSIONS)}: retrain it"
        )
    layout = InputLayout(
        metadata.embedding_version,
        metadata.generators,
        metadata.encoder_version,
        content_features=metadata.input_version == CONTENT_INPUT_VERSION,
    )
    if metadata.feature_names != layout.feature_names():
        raise ValueError("model expects different feature names than this code builds: retrain it")
    return layout


def _checked_bytes(path: Path, sha256: str) -> bytes:
    """The file's bytes, read once (hashed and loaded alike); ValueError if they differ from metadata."""
    if not path.is_file():
        raise FileNotFoundError(f"model file missing: {path}")
    payload = path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise ValueError(f"{path} does not match its metadata.json (partly copied?)")
    return payload


class LengthModel:
    """The tree graph of a model directory (see artifact.py): input rows -> tokens."""

    def __init__(self, model_dir: Path, *, intra_op_threads: int = 1, allow_cuda: bool = True) -> None:
        self.model_dir = model_dir
        self.metadata: ModelMetadata = read_metadata(model_dir)
        self.layout = layout_of(self.metadata)
        onnx_bytes = _checked_bytes(model_dir / ONNX_FILE_NAME, self.metadata.onnx_sha256)
        heads_bytes = _checked_bytes(model_dir / TEXT_HEADS_FILE_NAME, self.metadata.text_heads_sha256)
        self.text_heads = TextHeads.from_bytes(heads_bytes)
        if self.text_heads.has_embedding_head != bool(self.metadata.embedding_version):
            raise ValueError(f"{model_dir}: text heads and metadata disagree on the embedding head")
        self._session = make_session(onnx_bytes, intra_op_threads=intra_op_threads, allow_cuda=allow_cuda)
        raw_calibration = self.metadata.quantile_calibration
        # the calibration step's table (calibration.py); evaluation may set None to measure the raw trees
        self.calibration = QuantileCalibration.from_dict(raw_calibration) if raw_calibration else None
        self._output_names = [MEAN_OUTPUT_NAME] + [
            quantile_output_name(level) for level in self.metadata.quantile_levels
        ]

    @property
    def model_version(self) -> str:
        return self.metadata.model_version

    @property
    def providers(self) -> list[str]:
        """Execution providers of the ONNX Runtime session, preferred first."""
        return list(self._session.get_providers())

    def predict_matrix(self, matrix: np.ndarray, *, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(mean [n], quantiles [n, num_levels]) in tokens, floored and monotone, from input rows; the
        calibration step applied unless raw (the trees' own quantiles, which training calibrates)."""
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        outputs = self._session.run(self._output_names, {INPUT_NAME: matrix})
        mean_tokens = np.maximum(outputs[0].reshape(-1), MIN_TOKENS)
        quantile_tokens = np.concatenate([output.reshape(-1, 1) for output in outputs[1:]], axis=1)
        if self.calibration is not None and not raw:
            generators = self.layout.generators
            rows_generators = [generators[index] for index in np.argmax(matrix[:, -len(generators) :], axis=1)]
            quantile_tokens = self.calibration.apply(quantile_tokens, self.metadata.quantile_levels, rows_generators)
        return mean_tokens, make_monotone(quantile_tokens)

    def generator_for(self, served_model: str, default: str = "") -> str:
        """The generator column a request's served model maps to (default, else the model's, when unknown)."""
        if served_model in self.metadata.served_model_generators:
            return self.metadata.served_model_generators[served_model]
        if served_model in self.layout.generators:
            return served_model
        return default or self.metadata.default_generator


class LengthPredictor:
    """Embedder + tree model: what the service calls. `predict` blocks: call it off the event loop.

    The embedder is the frozen PromptEmbedder, or for a model with a fine-tuned encoder the
    FinetunedEncoder (finetune_encoder.py: same interface, per-generator scores instead of vectors).
    """

    def __init__(self, model: LengthModel, embedder: PromptEmbedder | None, default_generator: str = "") -> None:
        """default_generator overrides the model's own default ("" = keep it); it must be a column."""
        if default_generator and default_generator not in model.layout.generators:
            raise ValueError(f"default generator {default_generator!r} is not one of {list(model.layout.generators)}")
        self._default_generator = default_generator
        needed = model.metadata.embedding_version or model.metadata.encoder_version
        if needed and (embedder is None or embedder.spec.version != needed):
            raise ValueError(f"model {model.model_version} needs embedding {needed!r}")
        self.model = model
        self._embedder = embedder if needed else None

    @property
    def model_version(self) -> str:
        return self.model.model_version

    @property
    def embedder(self) -> PromptEmbedder | None:
        """The prompt embedder (None for a lexical-only model)."""
        return self._embedder

    def input_matrix(self, inputs: Sequence[PromptInput]) -> np.ndarray:
        """The tree graph's input rows for these prompts."""
        texts = [item.prompt_text for item in inputs]
        lexical = lexical_block(self.model.layout, [(item.prompt_text, item.num_prompt_tokens) for item in inputs])
        embedding = self._embedder.embed(texts) if self._embedder is not None else None
        generators = [self.model.generator_for(item.served_model, self._default_generator) for item in inputs]
        one_hot = self.model.layout.one_hot(generators)
        head_columns = self.model.text_heads.columns(texts, embedding, one_hot)
        return build_matrix(self.model.layout, lexical, head_columns, one_hot)

    def predict(self, inputs: Sequence[PromptInput]) -> list[LengthDistribution]:
        """One distribution per input, same order."""
        if not inputs:
            return []
        mean_tokens, quantile_tokens = self.model.predict_matrix(self.input_matrix(inputs))
        levels = self.model.metadata.quantile_levels
        return [
            LengthDistribution(
                mean_tokens=float(mean_tokens[row]),
                quantiles=tuple(
                    LengthQuantile(level, float(quantile_tokens[row, column])) for column, level in enumerate(levels)
                ),
                model_version=self.model_version,
            )
            for row in range(len(inputs))
        ]
