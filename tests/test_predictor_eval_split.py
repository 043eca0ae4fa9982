"""Held-out split by normalized prompt text across sources, prompt kinds, and calibration per decile."""

import numpy as np
import pytest

from services.predictor import data
from services.predictor.evaluate import EvalRows, Predictions, calibration_by_split, metrics_by_split
from services.predictor.metrics import coverage_by_decile
from services.predictor.prompt_kinds import PromptKind, prompt_kinds


def _example(text: str, source: str, group: str, tokens: int = 10) -> data.LengthExample:
    return data.LengthExample(text, 5, tokens, source, group)


def test_feedback_copy_of_a_sharegpt_prompt_joins_the_sharegpt_group():
    sharegpt = [_example("Write a poem", "sharegpt", "sharegpt:a"), _example("hi", "sharegpt", "sharegpt:b")]
    feedback = [_example("  write A poem ", "served:m", "feedback:x"), _example("new one", "served:m", "feedback:y")]
    alpaca = [_example("HI", "alpaca_eval:g1", "alpaca_eval:7"), _example("other", "alpaca_eval:g2", "alpaca_eval:7")]
    grouped = data.canonical_groups(feedback + alpaca + sharegpt)
    groups = [example.group_id for example in grouped]
    assert groups[0] == "sharegpt:a" and groups[1] == "feedback:y"
    # the instruction's text is a ShareGPT prompt: all of its rows (every generator) move together
    assert groups[2] == groups[3] == "sharegpt:b"
    assert groups[4:] == ["sharegpt:a", "sharegpt:b"]  # ShareGPT groups never move


def test_reference_examples_lend_their_groups_without_being_returned():
    reference = [_example("Write a poem", "sharegpt", "sharegpt:a")]
    grouped = data.canonical_groups([_example("write a poem", "served:m", "feedback:x")], reference)
    assert [example.group_id for example in grouped] == ["sharegpt:a"]


def test_prompt_kinds():
    code = "Fix this:\nint main() {\n  return 0;\n}\n"
    assert PromptKind.CODE in prompt_kinds(code, 10)
    assert PromptKind.CODE not in prompt_kinds("Write an essay about dogs; keep it short.", 10)
    assert PromptKind.URL in prompt_kinds("summarize https://example.com/a", 10)
    assert PromptKind.TABLE_JSON in prompt_kinds("give the answer as a markdown table", 10)
    assert PromptKind.MATH in prompt_kinds("what is 12 * 7?", 10)
    assert prompt_kinds("tell me a story", 300, is_conversation_start=False) == {
        PromptKind.LONG_PROMPT,
        PromptKind.LATER_CHUNK,
    }
    assert prompt_kinds("tell me a story", 10) == frozenset()


def test_coverage_by_decile_of_a_calibrated_predictor_is_nominal_in_each_bin():
    rng = np.random.default_rng(0)
    center = rng.uniform(10, 1000, 20000)
    actual = center * np.exp(rng.normal(0, 0.5, center.size))
    quantiles = np.stack([center * np.exp(0.5 * z) for z in (-1.2816, 0.0, 1.2816)], axis=1)
    bins = coverage_by_decile(actual, quantiles, (0.1, 0.5, 0.9), quantiles[:, 1])
    assert len(bins) == 10 and sum(entry["num_examples"] for entry in bins) == center.size
    for entry in bins:
        assert abs(entry["coverage_p10"] - 0.1) < 0.03 and abs(entry["coverage_p90"] - 0.9) < 0.03
    by_actual = coverage_by_decile(actual, quantiles, (0.1, 0.5, 0.9), actual)
    assert by_actual[0]["coverage_p90"] > 0.95 and by_actual[-1]["coverage_p90"] < 0.85  # ranks, not calibration


def test_metrics_and_calibration_split_by_source_and_kind():
    n = 60
    rng = np.random.default_rng(1)
    actual = rng.uniform(10, 500, n)
    quantiles = np.stack([actual * 0.5, actual, actual * 2], axis=1)
    kinds = tuple(frozenset({"code"}) if index < 30 else frozenset() for index in range(n))
    rows = EvalRows(np.zeros((n, 1), np.float32), actual, np.ones(n), ("sharegpt",) * n, ("sharegpt",) * n, kinds)
    predictions = Predictions({"model": actual}, {"model": quantiles})
    metrics = metrics_by_split(rows, predictions, (0.1, 0.5, 0.9))
    assert set(metrics) == {"sharegpt", "sharegpt | code"}
    assert metrics["sharegpt | code"]["model"]["num_examples"] == 30
    calibration = calibration_by_split(rows, predictions, (0.1, 0.5, 0.9))
    assert set(calibration) == {"sharegpt"}
    assert len(calibration["sharegpt"]["model"]["by_predicted_decile"]) == 10


def test_calibration_makes_tail_coverage_nominal_per_bin_and_keeps_p50():
    from services.predictor.calibration import fit_calibration

    rng = np.random.default_rng(2)
    center = rng.uniform(10, 1000, 8000)
    actual = center * np.exp(rng.normal(0, 0.8 - 0.5 * center / 1000, center.size))  # noisier when short
    quantiles = np.stack([center * 0.8, center, center * 1.25], axis=1)  # too narrow everywhere
    levels = (0.1, 0.5, 0.9)
    generators = ["sharegpt"] * 7200 + ["alpaca_eval:x"] * 800  # one family with its own table, one pooled
    calibration = fit_calibration(actual[::2], quantiles[::2], levels, generators[::2])
    assert set(calibration.tables) == {"*", "sharegpt"}
    calibrated = calibration.apply(quantiles[1::2], levels, generators[1::2])
    actual, quantiles = actual[1::2], quantiles[1::2]
    np.testing.assert_allclose(calibrated[:, 1], quantiles[:, 1], rtol=1e-6)  # the ranking score stays
    for entry in coverage_by_decile(actual, calibrated, levels, calibrated[:, 1]):
        assert abs(entry["coverage_p10"] - 0.1) < 0.05 and abs(entry["coverage_p90"] - 0.9) < 0.05
    again = type(calibration).from_dict(calibration.to_dict())
    np.testing.assert_array_equal(
        again.apply(quantiles, levels, generators[1::2]), calibration.apply(quantiles, levels, generators[1::2])
    )


def test_content_features_describe_code_urls_tables_and_pasted_documents():
    from services.predictor.content_features import CONTENT_FEATURE_NAMES, content_features

    def named(text: str) -> dict[str, float]:
        return dict(zip(CONTENT_FEATURE_NAMES, content_features(text).tolist()))

    plain = named("Write a haiku about autumn.")
    assert plain["log_code_lines"] == plain["has_code_fence"] == plain["log_urls"] == 0.0
    assert plain["contains_table"] == plain["contains_json"] == 0.0 and plain["pasted_share"] == 1.0
    code = named("Why does this fail?\n\n```\nint main() {\n  return 0;\n}\n```")
    assert code["has_code_fence"] == 1.0 and code["log_code_lines"] > 0
    assert named("see https://a.b/c and http://d.e")["log_urls"] == np.log1p(2).astype(np.float32)
    assert named("| a | b |\n|---|---|\n| 1 | 2 |")["contains_table"] == 1.0
    assert named('parse {"name": "x", "id": 3}')["contains_json"] == 1.0
    document = named("Summarize this in 3 bullets:\n\n" + "Lorem ipsum dolor sit amet. " * 200)
    assert document["pasted_share"] > 0.95 and document["log_request_chars"] == np.float32(np.log1p(30))


def test_content_layout_adds_its_columns_and_its_input_version():
    from services.predictor.content_features import CONTENT_FEATURE_NAMES
    from services.predictor.model_inputs import (
        CONTENT_INPUT_VERSION,
        INPUT_VERSION,
        InputLayout,
        build_matrix,
        lexical_block,
    )

    plain, content = InputLayout("", ("a",)), InputLayout("", ("a",), content_features=True)
    assert plain.input_version == INPUT_VERSION and content.input_version == CONTENT_INPUT_VERSION
    assert content.num_columns == plain.num_columns + len(CONTENT_FEATURE_NAMES)
    prompts = [("Hi", 1), ("List 5 ideas", 4)]
    matrix = build_matrix(content, lexical_block(content, prompts), np.zeros((2, 1)), content.one_hot(["a", "a"]))
    assert matrix.shape == (2, len(content.feature_names()))
    with pytest.raises(ValueError, match="lexical columns"):
        build_matrix(content, lexical_block(plain, prompts), np.zeros((2, 1)), content.one_hot(["a", "a"]))
