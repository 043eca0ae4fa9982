"""Linear text heads stacked under the trees: prompt text -> a first guess of log1p(output tokens).

Trees split one column at a time, so 384 embedding dimensions or 2^18 hashed terms are a poor fit
for them; a ridge regression reads all of them at once. Two heads, each ridge on its inputs plus
the generator one-hot, predicting log1p(tokens):

    tfidf head:      L2-normalized (1 + log tf) * idf over hashed words and word pairs (text_terms.py)
    embedding head:  the MiniLM sentence embedding (only when the model uses one)

A model with a fine-tuned encoder (finetune_*.py) has no embedding head: its second column is the
encoder's own score for the row's generator (`encoder_scores`; the 'embedding' passed in is then
the encoder's [n, G] scores, in the layout's generator order), already a log1p(tokens) estimate.

Their outputs become two input columns of the trees (model_inputs.py). Stacking without leaks:
the trees are trained on out-of-fold head outputs (each training row scored by heads fitted
without its fold); the heads stored with the model are fitted on all training rows and score
held-out rows and served prompts.

Stored as text_heads.npz next to model.onnx (float16 hashed weights: ~1 MB).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from services.predictor.text_terms import NUM_HASH_BUCKETS, tfidf_dot, tfidf_rows

TEXT_HEADS_FILE_NAME = "text_heads.npz"
TFIDF_RIDGE_ALPHA = 1.0  # ridge penalty of the TF-IDF head
EMBEDDING_RIDGE_ALPHA = 10.0  # ridge penalty of the embedding head
NUM_STACK_FOLDS = 5  # folds of the out-of-fold head outputs
CG_MAX_ITERATIONS = 500


@dataclass(frozen=True)
class TextHeads:
    """Fitted weights of both heads (the embedding head's arrays are empty when unused)."""

    idf: np.ndarray  # [NUM_HASH_BUCKETS] float16, inverse document frequency per bucket
    tfidf_coef: np.ndarray  # [NUM_HASH_BUCKETS + G] float16: term weights, then generator weights
    tfidf_intercept: float  # mean log1p(tokens) of the training rows
    embedding_coef: np.ndarray  # [EMBEDDING_DIM + G] float32, or [0] without an embedding head
    embedding_intercept: float  # mean log1p(tokens), or 0.0
    encoder_scores: bool = False  # second column = the fine-tuned encoder's score of the row's generator

    @property
    def has_embedding_head(self) -> bool:
        return self.embedding_coef.size > 0

    def columns(self, texts: Sequence[str], embedding: np.ndarray | None, one_hot: np.ndarray) -> np.ndarray:
        """[n, 1 or 2] float32: the tfidf head, then the embedding head or encoder score when present."""
        num_generators = one_hot.shape[1]
        term_coef, generator_coef = self.tfidf_coef[:NUM_HASH_BUCKETS], self.tfidf_coef[NUM_HASH_BUCKETS:]
        tfidf = np.array([tfidf_dot(text, self.idf, term_coef) for text in texts], dtype=np.float64)
        tfidf += one_hot @ generator_coef.astype(np.float64) + self.tfidf_intercept
        if self.encoder_scores:
            if embedding is None or embedding.shape != one_hot.shape:
                raise ValueError("these text heads need the fine-tuned encoder's scores, one per generator column")
            return np.stack([tfidf, (embedding.astype(np.float64) * one_hot).sum(axis=1)], axis=1).astype(np.float32)
        if not self.has_embedding_head:
            return tfidf[:, None].astype(np.float32)
        if embedding is None:
            raise ValueError("these text heads need the prompt embedding")
        weights = self.embedding_coef.astype(np.float64)
        dense = embedding.astype(np.float64) @ weights[:-num_generators] + one_hot @ weights[-num_generators:]
        return np.stack([tfidf, dense + self.embedding_intercept], axis=1).astype(np.float32)

    def to_bytes(self) -> bytes:
        """The text_heads.npz file's bytes (deterministic for equal weights)."""
        stream = io.BytesIO()
        flags = {"encoder_scores": np.array(True)} if self.encoder_scores else {}  # absent: older files read alike
        np.savez(
            stream,
            idf=self.idf,
            tfidf_coef=self.tfidf_coef,
            embedding_coef=self.embedding_coef,
            intercepts=np.array([self.tfidf_intercept, self.embedding_intercept]),
            **flags,
        )
        return stream.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> "TextHeads":
        with np.load(io.BytesIO(payload)) as stored:
            intercepts = stored["intercepts"]
            encoder_scores = bool(stored["encoder_scores"]) if "encoder_scores" in stored.files else False
            return cls(
                stored["idf"],
                stored["tfidf_coef"],
                float(intercepts[0]),
                stored["embedding_coef"],
                float(intercepts[1]),
                encoder_scores,
            )


def _idf(texts: Sequence[str]) -> np.ndarray:
    """Smoothed idf: log((1 + n) / (1 + document frequency)) + 1."""
    rows = tfidf_rows(list(texts), np.ones(NUM_HASH_BUCKETS))
    document_frequency = np.bincount(rows.indices, minlength=NUM_HASH_BUCKETS)
    return np.log((1.0 + len(texts)) / (1.0 + document_frequency)) + 1.0


def _ridge_sparse(rows, targets: np.ndarray, alpha: float) -> np.ndarray:
    """argmin ||rows w - targets||^2 + alpha ||w||^2 by conjugate gradients (rows: scipy sparse)."""
    from scipy.sparse.linalg import LinearOperator, cg

    size = rows.shape[1]
    normal = LinearOperator((size, size), matvec=lambda w: rows.T @ (rows @ w) + alpha * w, dtype=np.float64)
    solution, _ = cg(normal, rows.T @ targets, maxiter=CG_MAX_ITERATIONS, rtol=1e-6)
    return solution


def _ridge_dense(matrix: np.ndarray, targets: np.ndarray, alpha: float) -> np.ndarray:
    gram = matrix.T @ matrix + alpha * np.eye(matrix.shape[1])
    return np.linalg.solve(gram, matrix.T @ targets)


def fit_text_heads(
    texts: Sequence[str],
    embedding: np.ndarray | None,
    one_hot: np.ndarray,
    log_targets: np.ndarray,
    *,
    encoder_scores: bool = False,
) -> TextHeads:
    """Both heads fitted on these rows (targets: log1p(tokens)), weights rounded as stored.

    encoder_scores: `embedding` holds a fine-tuned encoder's scores, used as they are (no ridge).
    """
    from scipy import sparse

    intercept = float(np.mean(log_targets))
    centered = log_targets - intercept
    idf = _idf(texts).astype(np.float16)
    rows = sparse.hstack([tfidf_rows(list(texts), idf.astype(np.float64)), sparse.csr_matrix(one_hot)]).tocsr()
    tfidf_coef = _ridge_sparse(rows, centered, TFIDF_RIDGE_ALPHA).astype(np.float16)
    embedding_coef = np.zeros(0, np.float32)
    if encoder_scores:
        return TextHeads(idf, tfidf_coef, intercept, embedding_coef, 0.0, encoder_scores=True)
    if embedding is not None:
        dense = np.hstack([embedding.astype(np.float64), one_hot])
        embedding_coef = _ridge_dense(dense, centered, EMBEDDING_RIDGE_ALPHA).astype(np.float32)
    return TextHeads(idf, tfidf_coef, intercept, embedding_coef, intercept if embedding is not None else 0.0)


def out_of_fold_columns(
    texts: Sequence[str],
    embedding: np.ndarray | None,
    one_hot: np.ndarray,
    log_targets: np.ndarray,
    folds: np.ndarray,
    *,
    encoder_scores: bool = False,
) -> np.ndarray:
    """Head columns of training rows, each from heads fitted without the row's fold.

    encoder_scores: `embedding` holds a fine-tuned encoder's scores, out of fold already.
    """
    num_columns = 2 if embedding is not None else 1
    result = np.zeros((len(texts), num_columns), dtype=np.float32)
    for fold in np.unique(folds):
        inside, outside = folds == fold, folds != fold
        heads = fit_text_heads(
            [t for t, keep in zip(texts, outside) if keep],
            None if embedding is None else embedding[outside],
            one_hot[outside],
            log_targets[outside],
            encoder_scores=encoder_scores,
        )
        result[inside] = heads.columns(
            [t for t, keep in zip(texts, inside) if keep],
            None if embedding is None else embedding[inside],
            one_hot[inside],
        )
    return result
