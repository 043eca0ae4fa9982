"""The tree model's input row, built the same way in training, evaluation and serving.

    | lexical features (features.py) | text heads (text_heads.py)                         | generator one-hot |
      NUM_FEATURES columns             tfidf head [, embedding head | encoder score] (log)  len(generators)

Why a generator one-hot: the same prompt gets answers several times longer from one model than
from another (AlpacaEval per-model means span 19..930 tokens), so one model trained on several
generators must be told which one it predicts for; the trees share what the prompt says across
generators and shift the scale per generator. The prompt embedding reaches the trees through the
embedding head (a ridge over its 384 dimensions), not as 384 columns; a model with a fine-tuned
encoder (finetune_*.py) reads that encoder's score for the row's generator instead.

Invariant: `layout.feature_names()` lists the columns of `build_matrix(layout, ...)` in order; a
model's metadata.json stores that list, and serving refuses a model whose list differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from services.predictor import features
from services.predictor.content_features import (
    CONTENT_FEATURE_NAMES,
    CONTENT_FEATURE_VERSION,
    NUM_CONTENT_FEATURES,
    content_feature_matrix,
)

INPUT_VERSION = f"{features.FEATURE_VERSION}+heads-v1"  # lexical | heads | one-hot
CONTENT_INPUT_VERSION = f"{features.FEATURE_VERSION}+{CONTENT_FEATURE_VERSION}+heads-v1"  # + content block
INPUT_VERSIONS = (INPUT_VERSION, CONTENT_INPUT_VERSION)  # what this code builds (and serves)
GENERATOR_PREFIX = "generator="


@dataclass(frozen=True)
class InputLayout:
    """Which column blocks a model's input has."""

    embedding_version: str  # EmbeddingSpec.version; "" = no embedding columns (lexical only)
    generators: tuple[str, ...]  # one-hot columns, in order (at least one)
    encoder_version: str = ""  # EncoderSpec.version of a fine-tuned encoder; "" = none (finetune_encoder.py)
    content_features: bool = False  # content columns (content_features.py) after the lexical ones

    def __post_init__(self) -> None:
        if not self.generators:
            raise ValueError("a model needs at least one generator column")
        if self.embedding_version and self.encoder_version:
            raise ValueError("a model uses the frozen embedding or a fine-tuned encoder, not both")
        if len(set(self.generators)) != len(self.generators):
            raise ValueError(f"duplicate generators in {self.generators}")

    @property
    def num_head_columns(self) -> int:
        """The tfidf head, plus the embedding head or the fine-tuned encoder's score when used."""
        return 2 if self.embedding_version or self.encoder_version else 1

    @property
    def input_version(self) -> str:
        return CONTENT_INPUT_VERSION if self.content_features else INPUT_VERSION

    @property
    def num_content_columns(self) -> int:
        return NUM_CONTENT_FEATURES if self.content_features else 0

    @property
    def num_columns(self) -> int:
        return features.NUM_FEATURES + self.num_content_columns + self.num_head_columns + len(self.generators)

    def feature_names(self) -> tuple[str, ...]:
        second = "text_head_encoder" if self.encoder_version else "text_head_embedding"
        heads = ("text_head_tfidf", second)[: self.num_head_columns]
        one_hot = tuple(GENERATOR_PREFIX + name for name in self.generators)
        content = CONTENT_FEATURE_NAMES if self.content_features else ()
        return features.FEATURE_NAMES + content + heads + one_hot

    def one_hot(self, generators: Sequence[str]) -> np.ndarray:
        """float64 [n, len(self.generators)]; ValueError on a generator the layout does not have."""
        column_of = {name: index for index, name in enumerate(self.generators)}
        matrix = np.zeros((len(generators), len(self.generators)))
        for row, name in enumerate(generators):
            if name not in column_of:
                raise ValueError(f"generator {name!r} is not one of the model's {list(self.generators)}")
            matrix[row, column_of[name]] = 1.0
        return matrix


def lexical_block(layout: InputLayout, prompts: Sequence[tuple[str, int]]) -> np.ndarray:
    """The lexical columns, plus the content columns when the layout has them: [n, NUM_FEATURES (+ content)]."""
    lexical = features.extract_feature_matrix(prompts)
    if not layout.content_features:
        return lexical
    return np.hstack([lexical, content_feature_matrix([text for text, _ in prompts])])


def build_matrix(layout: InputLayout, lexical: np.ndarray, head_columns: np.ndarray, one_hot: np.ndarray) -> np.ndarray:
    """float32 [n, layout.num_columns] from the three blocks (each with one row per prompt); `lexical`
    holds the content columns too when the layout has them (`lexical_block`)."""
    if not lexical.shape[0] == head_columns.shape[0] == one_hot.shape[0]:
        raise ValueError("lexical, head and generator blocks must have one row per prompt")
    if lexical.shape[1] != features.NUM_FEATURES + layout.num_content_columns:
        raise ValueError(f"this layout needs {features.NUM_FEATURES + layout.num_content_columns} lexical columns")
    if head_columns.shape[1] != layout.num_head_columns or one_hot.shape[1] != len(layout.generators):
        raise ValueError(
            f"this layout needs {layout.num_head_columns} head and {len(layout.generators)} generator columns"
        )
    return np.hstack([lexical, head_columns, one_hot]).astype(np.float32)
