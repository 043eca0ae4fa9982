"""Hashed word and word-pair counts of a prompt, for the TF-IDF text head (text_heads.py).

Why hashing: the vocabulary of ShareGPT prompts is unbounded; hashing words into
NUM_HASH_BUCKETS fixed slots needs no stored vocabulary, and collisions cost little at this size.

    "Write a poem"  ->  terms: write, a, poem, "write a", "a poem"  ->  crc32(term) % NUM_HASH_BUCKETS

Invariants: a pure function of the text (crc32, not Python's salted hash()), the same on every
machine; only the first and last TERM_WINDOW_CHARS characters are read, so cost is bounded.
"""

from __future__ import annotations

import zlib

import numpy as np

from services.predictor.features import _WORD_PATTERN

NUM_HASH_BUCKETS = 1 << 18  # slots of the hashed term space
TERM_WINDOW_CHARS = 2000  # characters read from each end of a long prompt


def _window(text: str) -> str:
    if len(text) <= 2 * TERM_WINDOW_CHARS:
        return text
    return text[:TERM_WINDOW_CHARS] + "\n" + text[-TERM_WINDOW_CHARS:]


def hashed_term_counts(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(bucket indices int64, counts float64) of the text's words and adjacent word pairs."""
    words = _WORD_PATTERN.findall(_window(text).lower())
    terms = words + [f"{first} {second}" for first, second in zip(words, words[1:])]
    if not terms:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    buckets = np.fromiter((zlib.crc32(term.encode("utf-8")) for term in terms), np.int64, len(terms))
    indices, counts = np.unique(buckets % NUM_HASH_BUCKETS, return_counts=True)
    return indices, counts.astype(np.float64)


def tfidf_rows(texts: list[str], idf: np.ndarray):
    """scipy CSR [len(texts), NUM_HASH_BUCKETS]: (1 + log tf) * idf, each row L2-normalized."""
    from scipy import sparse

    indptr, indices, values = [0], [], []
    for text in texts:
        buckets, counts = hashed_term_counts(text)
        weights = (1.0 + np.log(counts)) * idf[buckets]
        norm = np.linalg.norm(weights)
        indices.append(buckets)
        values.append(weights / norm if norm > 0 else weights)
        indptr.append(indptr[-1] + len(buckets))
    return sparse.csr_matrix(
        (
            np.concatenate(values) if values else np.zeros(0),
            np.concatenate(indices) if indices else np.zeros(0, np.int64),
            np.asarray(indptr),
        ),
        shape=(len(texts), NUM_HASH_BUCKETS),
    )


def tfidf_dot(text: str, idf: np.ndarray, coef: np.ndarray) -> float:
    """The L2-normalized TF-IDF row of one text dotted with coef (serving; no scipy needed)."""
    buckets, counts = hashed_term_counts(text)
    if buckets.size == 0:
        return 0.0
    weights = (1.0 + np.log(counts)) * idf[buckets].astype(np.float64)
    norm = np.linalg.norm(weights)
    return float(weights @ coef[buckets].astype(np.float64) / norm) if norm > 0 else 0.0
