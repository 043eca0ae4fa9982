"""Training rows: examples -> raw blocks (lexical, embedding, one-hot) -> stacked model input rows.

The text-head columns depend on the split (out-of-fold on training rows, final heads on held-out
rows, exactly as served), so `RawRows` holds everything else and `stacked_rows` fills them in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from services.predictor import data
from services.predictor.embedding_cache import EmbeddingCache
from services.predictor.evaluate import EvalRows, rows_of_examples
from services.predictor.model_inputs import InputLayout, build_matrix, lexical_block
from services.predictor.text_heads import NUM_STACK_FOLDS, TextHeads, fit_text_heads, out_of_fold_columns

VALIDATION_FRACTION = 0.1  # share of training groups used for early stopping
Progress = Callable[[str], None]


@dataclass(frozen=True)
class RawRows:
    """Everything about some examples except the text-head columns (which depend on the split)."""

    texts: list[str]  # prompts
    lexical: np.ndarray  # [n, NUM_FEATURES (+ content columns)] (model_inputs.lexical_block)
    embedding: np.ndarray | None  # [n, EMBEDDING_DIM], None for a model without embedding
    one_hot: np.ndarray  # [n, num generators]
    examples: list[data.LengthExample]  # the examples themselves (targets, sources, groups)


def raw_rows(
    layout: InputLayout, examples: Sequence[data.LengthExample], cache: EmbeddingCache | None, progress: Progress
) -> RawRows:
    """Lexical features, embeddings (cached) and generator one-hot of examples (generator = source)."""
    texts = [e.prompt_text for e in examples]
    return RawRows(
        texts=texts,
        lexical=lexical_block(layout, [(e.prompt_text, e.num_prompt_tokens) for e in examples]),
        embedding=cache.embed(texts, progress) if cache is not None else None,
        one_hot=layout.one_hot([e.source for e in examples]),
        examples=list(examples),
    )


def eval_rows(layout: InputLayout, raw: RawRows, head_columns: np.ndarray) -> EvalRows:
    """Model input rows and truths (generator column = source), with group ids."""
    matrix = build_matrix(layout, raw.lexical, head_columns, raw.one_hot)
    return rows_of_examples(matrix, raw.examples, [e.source for e in raw.examples], with_group_ids=True)


def _select(raw: RawRows, rows: np.ndarray) -> RawRows:
    return RawRows(
        texts=[text for text, keep in zip(raw.texts, rows) if keep],
        lexical=raw.lexical[rows],
        embedding=None if raw.embedding is None else raw.embedding[rows],
        one_hot=raw.one_hot[rows],
        examples=[example for example, keep in zip(raw.examples, rows) if keep],
    )


def stacked_rows(
    seed: int, layout: InputLayout, train: RawRows, heldout: RawRows, progress: Progress
) -> tuple[TextHeads, EvalRows, EvalRows, EvalRows]:
    """(final text heads, fit rows, early-stopping rows, held-out rows) with head columns filled.

    Training rows get out-of-fold head columns; held-out rows get the final heads' (fitted on
    every training row), exactly as served.
    """
    log_targets = np.log1p([e.num_output_tokens for e in train.examples])
    folds = np.array([data.group_fold(e.group_id, num_folds=NUM_STACK_FOLDS, seed=seed) for e in train.examples])
    started = time.perf_counter()
    encoder = bool(layout.encoder_version)
    train_columns = out_of_fold_columns(
        train.texts, train.embedding, train.one_hot, log_targets, folds, encoder_scores=encoder
    )
    heads = fit_text_heads(train.texts, train.embedding, train.one_hot, log_targets, encoder_scores=encoder)
    elapsed_s = time.perf_counter() - started
    progress(f"text heads ({layout.num_head_columns}) fitted, {NUM_STACK_FOLDS} folds, in {elapsed_s:.1f} s")
    valid = np.array(
        [data.is_heldout(e.group_id, heldout_fraction=VALIDATION_FRACTION, seed=seed + 1) for e in train.examples]
    )
    heldout_rows = eval_rows(layout, heldout, heads.columns(heldout.texts, heldout.embedding, heldout.one_hot))
    return (
        heads,
        eval_rows(layout, _select(train, ~valid), train_columns[~valid]),
        eval_rows(layout, _select(train, valid), train_columns[valid]),
        heldout_rows,
    )


def concat_rows(first: EvalRows, second: EvalRows) -> EvalRows:
    """The rows of first, then those of second."""
    return EvalRows(
        matrix=np.concatenate([first.matrix, second.matrix]),
        actual_tokens=np.concatenate([first.actual_tokens, second.actual_tokens]),
        prompt_tokens=np.concatenate([first.prompt_tokens, second.prompt_tokens]),
        generators=first.generators + second.generators,
        sources=first.sources + second.sources,
        kinds=first.kinds + second.kinds,
        group_ids=first.group_ids + second.group_ids,
    )
