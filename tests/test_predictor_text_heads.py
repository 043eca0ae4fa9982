"""Hashed terms and the linear text heads stacked under the trees."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")

from services.predictor.metrics import kendall_tau_b  # noqa: E402
from services.predictor.text_heads import TextHeads, fit_text_heads, out_of_fold_columns  # noqa: E402
from services.predictor.text_terms import NUM_HASH_BUCKETS, hashed_term_counts, tfidf_rows  # noqa: E402


def _corpus(num_rows: int = 240) -> tuple[list[str], np.ndarray]:
    """Prompts whose answer length is set by one word ("essay" long, "word" short) among noise."""
    rng = np.random.default_rng(0)
    kinds = {"essay": 600.0, "list": 150.0, "word": 3.0}
    texts, tokens = [], []
    for index in range(num_rows):
        kind = list(kinds)[index % 3]
        texts.append(f"please write a {kind} about subject {rng.integers(1000)} {'thanks ' * int(rng.integers(3))}")
        tokens.append(kinds[kind] * rng.uniform(0.7, 1.3))
    return texts, np.log1p(np.array(tokens))


def test_hashed_terms_are_pure_and_count_pairs():
    indices, counts = hashed_term_counts("Write a poem, a poem!")
    again_indices, again_counts = hashed_term_counts("write A POEM a poem")
    np.testing.assert_array_equal(indices, again_indices)
    np.testing.assert_array_equal(counts, again_counts)
    assert counts.sum() == 5 + 4  # 5 words, 4 adjacent pairs
    assert indices.min() >= 0 and indices.max() < NUM_HASH_BUCKETS
    assert hashed_term_counts("")[0].size == 0
    rows = tfidf_rows(["write a poem", ""], np.ones(NUM_HASH_BUCKETS))
    assert rows.shape == (2, NUM_HASH_BUCKETS)
    assert np.linalg.norm(rows[0].toarray()) == pytest.approx(1.0) and rows[1].nnz == 0


def test_heads_learn_from_words_and_survive_serialization():
    texts, targets = _corpus()
    one_hot = np.ones((len(texts), 1))
    embedding = np.random.default_rng(1).normal(size=(len(texts), 8))
    heads = fit_text_heads(texts, embedding, one_hot, targets)
    columns = heads.columns(texts, embedding, one_hot)
    assert columns.shape == (len(texts), 2) and columns.dtype == np.float32
    assert kendall_tau_b(columns[:, 0], targets) > 0.6  # the tfidf head reads the deciding word
    again = TextHeads.from_bytes(heads.to_bytes())
    np.testing.assert_array_equal(again.columns(texts, embedding, one_hot), columns)
    assert heads.to_bytes() == fit_text_heads(texts, embedding, one_hot, targets).to_bytes()  # deterministic
    with pytest.raises(ValueError, match="embedding"):
        heads.columns(texts, None, one_hot)
    tfidf_only = fit_text_heads(texts, None, one_hot, targets)
    assert not tfidf_only.has_embedding_head and tfidf_only.columns(texts, None, one_hot).shape == (len(texts), 1)


def test_out_of_fold_columns_never_see_their_own_row():
    texts, targets = _corpus(90)
    one_hot = np.ones((len(texts), 1))
    folds = np.arange(len(texts)) % 3
    columns = out_of_fold_columns(texts, None, one_hot, targets, folds)
    fold_zero = folds == 0
    heads = fit_text_heads(
        [t for t, keep in zip(texts, ~fold_zero) if keep], None, one_hot[~fold_zero], targets[~fold_zero]
    )
    expected = heads.columns([t for t, keep in zip(texts, fold_zero) if keep], None, one_hot[fold_zero])
    np.testing.assert_allclose(columns[fold_zero], expected, rtol=1e-6)
