"""Prompt features and held-out metrics of the predictor: pure functions, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.predictor import features
from services.predictor.features import FEATURE_NAMES, NUM_FEATURES, extract_feature_matrix, extract_features
from services.predictor.metrics import bucket_accuracy, kendall_tau_b, prediction_metrics, share_within, spearman_rho
from services.predictor.model_inputs import InputLayout, build_matrix


def _named(prompt_text: str, num_prompt_tokens: int = 0) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, extract_features(prompt_text, num_prompt_tokens).tolist()))


def test_vector_shape_names_and_version():
    vector = extract_features("Hello there", 3)
    assert vector.dtype == np.float32 and vector.shape == (NUM_FEATURES,)
    assert len(set(FEATURE_NAMES)) == NUM_FEATURES == len(FEATURE_NAMES)
    assert features.FEATURE_VERSION


def test_pure_and_matrix_matches_rows():
    prompts = [("Write a poem about the sea.", 8), ("def f(x):\n    return x;\n", 12), ("", 0)]
    matrix = extract_feature_matrix(prompts)
    again = extract_feature_matrix(prompts)
    assert matrix.shape == (3, NUM_FEATURES)
    np.testing.assert_array_equal(matrix, again)
    for row, (text, tokens) in enumerate(prompts):
        np.testing.assert_array_equal(matrix[row], extract_features(text, tokens))


def test_counts():
    named = _named("line one\nline two?\nline three", 9)
    assert named["log_prompt_tokens"] == pytest.approx(math.log1p(9))
    assert named["log_chars"] == pytest.approx(math.log1p(29))
    assert named["log_newlines"] == pytest.approx(math.log1p(2))
    assert named["log_question_marks"] == pytest.approx(math.log1p(1))
    assert named["ends_with_question_mark"] == 0.0
    assert _named("Why is the sky blue?  ")["ends_with_question_mark"] == 1.0


def test_missing_token_count_is_estimated_from_characters():
    text = "x" * 400
    named = _named(text, 0)
    assert named["log_prompt_tokens"] == pytest.approx(math.log1p(400 / features.CHARS_PER_TOKEN_ESTIMATE))
    assert _named("", 0)["log_prompt_tokens"] == 0.0


def test_negative_token_count_is_rejected():
    with pytest.raises(ValueError, match="num_prompt_tokens"):
        extract_features("hi", -1)


@pytest.mark.parametrize(
    ("prompt", "signal"),
    [
        ("Give me a list of famous painters", "asks_list"),
        ("Write a Python function that reverses a string", "asks_code"),
        ("Write an essay about climate change", "asks_long_form"),
        ("Briefly, what is entropy", "asks_brief"),
        ("TL;DR of this article please", "asks_brief"),
        ("Is Paris in France? Answer with yes or no.", "asks_one_word"),
        ("Translate 'good morning' into German", "asks_translation"),
        ("Rephrase this sentence: the cat sat", "asks_rewrite"),
        ("Explain how vaccines work", "asks_explain"),
        ("Classify the sentiment of this tweet", "asks_choice"),
        ("How many apples are left if I eat 3 of 7", "asks_math"),
        ("Draft an email to my landlord", "asks_email"),
        ("Return the result as a markdown table", "asks_table"),
        ("Make a 3-day itinerary for Rome", "asks_plan"),
        ("I want you to act as a Linux terminal", "asks_role_play"),
        ("continue", "asks_continue"),
        ("Hello!", "is_greeting"),
        ("What is the capital of Peru", "starts_with_question_word"),
        ("Fix this:\n```\nint main() {\n  return 0;\n}\n```", "contains_code"),
        ("Summarize https://example.com/post", "contains_url"),
    ],
)
def test_lexical_signal_fires(prompt, signal):
    assert _named(prompt)[signal] == 1.0


def test_lexical_signals_stay_off_on_plain_prompt():
    named = _named("The weather in Oslo tomorrow")
    lexical = [name for name in FEATURE_NAMES if name.startswith(("asks_", "is_", "contains_", "starts_"))]
    assert [name for name in lexical if named[name]] == []


def test_requested_counts():
    assert _named("Give me 5 ideas for a party")["log_requested_items"] == pytest.approx(math.log1p(5))
    assert _named("List 12 capitals")["log_requested_items"] == pytest.approx(math.log1p(12))
    assert _named("Write a story in 300 words")["log_requested_words"] == pytest.approx(math.log1p(300))
    assert _named("a 500-word essay")["log_requested_words"] == pytest.approx(math.log1p(500))
    # A year or an id is not a count of things to write.
    assert _named("What happened in 1969 ideas")["log_requested_items"] == 0.0
    assert _named("What happened in 2023")["log_requested_words"] == 0.0


def test_instruction_at_the_end_of_a_long_document_is_seen():
    document = "Some pasted report text. " * 4000  # ~100k characters
    named = _named(document + "\nSummarize the above in 3 bullet points.")
    assert named["asks_brief"] == 1.0 and named["log_requested_items"] == pytest.approx(math.log1p(3))
    # The middle of a long document is outside the lexical window (bounded cost, by design).
    middle = document + " translate " + document
    assert _named(middle)["asks_translation"] == 0.0


def test_kendall_tau_b_known_values():
    x = np.arange(10.0)
    assert kendall_tau_b(x, x) == pytest.approx(1.0)
    assert kendall_tau_b(x, -x) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau_b(np.ones(5), x[:5]))
    with pytest.raises(ValueError):
        kendall_tau_b(x, x[:3])


def test_kendall_tau_b_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, size=1500).astype(float)  # many ties; spans several blocks
    y = x + rng.integers(0, 15, size=1500)
    assert kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-9)


def test_prediction_metrics_on_a_known_case():
    actual = np.array([10.0, 20.0, 30.0, 400.0])
    quantiles = np.stack([actual * 0.5, actual + np.array([0, 0, 60, 120]), actual * 2], axis=1)
    metrics = prediction_metrics(
        actual_tokens=actual, mean_tokens=actual, quantile_tokens=quantiles, quantile_levels=(0.1, 0.5, 0.9)
    )
    assert metrics["kendall_tau"] == 1.0 and metrics["spearman_rho"] == 1.0
    assert metrics["mae_tokens"] == 45.0  # (0 + 0 + 60 + 120) / 4
    assert (metrics["acc_50"], metrics["acc_100"]) == (0.5, 0.75)
    assert metrics["bucket_accuracy"] == 0.5  # 30 -> 90 crosses 64; 400 -> 520 crosses 512
    assert (metrics["coverage_p10"], metrics["coverage_p50"], metrics["coverage_p90"]) == (0.0, 1.0, 1.0)


def test_rank_metrics_match_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 10, size=300).astype(float)
    y = x + rng.integers(0, 6, size=300)
    assert spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-9)
    assert math.isnan(spearman_rho(np.ones(4), np.arange(4.0)))
    assert share_within(np.array([0.0, 100.0]), np.array([50.0, 0.0]), 50) == 0.5
    assert bucket_accuracy(np.array([64.0, 65.0]), np.array([1.0, 1.0])) == 0.5


def test_input_rows_put_each_block_in_its_columns():
    layout = InputLayout(embedding_version="emb-test", generators=("a", "b"))
    lexical = extract_feature_matrix([("Hi", 1), ("List 5 ideas", 4)])
    heads = np.array([[1.5, 2.5], [3.5, 4.5]])
    one_hot = layout.one_hot(["b", "a"])
    np.testing.assert_array_equal(one_hot, [[0.0, 1.0], [1.0, 0.0]])
    matrix = build_matrix(layout, lexical, heads, one_hot)
    assert matrix.shape == (2, layout.num_columns) == (2, len(layout.feature_names())) == (2, NUM_FEATURES + 4)
    np.testing.assert_array_equal(matrix[:, :NUM_FEATURES], lexical)
    np.testing.assert_array_equal(matrix[:, NUM_FEATURES:], np.hstack([heads, one_hot]))
    assert layout.feature_names()[NUM_FEATURES:] == (
        "text_head_tfidf",
        "text_head_embedding",
        "generator=a",
        "generator=b",
    )
    with pytest.raises(ValueError, match="generator 'c'"):
        layout.one_hot(["a", "c"])
    with pytest.raises(ValueError, match="head"):
        build_matrix(layout, lexical, heads[:, :1], one_hot)
    lexical_only = InputLayout(embedding_version="", generators=("a",))
    assert lexical_only.feature_names()[NUM_FEATURES:] == ("text_head_tfidf", "generator=a")
