"""`alise predictor ceiling`: the statistics (against simulated labels with a known answer) and the
loaders of prompts with several answers (copies dropped, runs joined by prompt text)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from services.bench import predictor_ceiling_stats as stats
from services.bench.predictor_ceiling_data import alpaca_eval_lengths, sample_files_repeated, sharegpt_repeated
from services.cli import predictor_cmd
from services.cli.predictor_cmd import build_parser
from services.predictor.metrics import kendall_tau_b
from tests.shared_data import SHARED_DATA_DIR, requires_shared_data


def test_gaussian_ceiling_recovers_the_ideal_predictors_tau_from_two_samples() -> None:
    """Simulated prompts: log length = effect + noise. The tau implied by two samples matches the tau
    of the true effect against one sample, and exceeds the sample-vs-sample tau."""
    rng = np.random.default_rng(0)
    effect = rng.normal(0.0, 1.0, 2000)
    first, second = effect + rng.normal(0.0, 0.9, 2000), effect + rng.normal(0.0, 0.9, 2000)
    sample_tau = kendall_tau_b(first, second)
    ideal_tau = kendall_tau_b(effect, first)
    assert stats.gaussian_ceiling_tau(sample_tau) == pytest.approx(ideal_tau, abs=0.02)
    assert stats.gaussian_ceiling_tau(sample_tau) > sample_tau + 0.1
    assert stats.gaussian_ceiling_tau(1.0) == pytest.approx(1.0)
    assert math.isnan(stats.gaussian_ceiling_tau(0.0))


def test_pair_tau_is_one_for_identical_answers_and_near_zero_for_unrelated_ones() -> None:
    rng = np.random.default_rng(1)
    identical = [np.full(3, value) for value in rng.permutation(200) + 1.0]
    estimate = stats.pair_tau(identical, num_draws=5, num_bootstrap=10)
    assert estimate.tau == pytest.approx(1.0)
    assert estimate.num_prompts == 200
    unrelated = [rng.lognormal(5.0, 1.0, 2) for _ in range(400)]
    noise = stats.pair_tau(unrelated, num_draws=10, num_bootstrap=40)
    assert abs(noise.tau) < 0.06
    assert noise.low < noise.tau < noise.high


def test_pair_tau_refuses_single_answers_and_gives_nan_for_few_prompts() -> None:
    with pytest.raises(ValueError, match="at least 2 answers"):
        stats.pair_tau([np.array([1.0, 2.0]), np.array([3.0])])
    few = stats.pair_tau([np.array([1.0, 2.0 + i]) for i in range(stats.MIN_PROMPTS - 1)])
    assert math.isnan(few.tau) and few.num_prompts == stats.MIN_PROMPTS - 1


def test_predictor_tau_of_the_true_effect_matches_the_gaussian_ceiling() -> None:
    rng = np.random.default_rng(2)
    effect = rng.normal(0.0, 1.0, 1000)
    answers = [e + rng.normal(0.0, 0.8, 2) for e in effect]
    implied = stats.gaussian_ceiling_tau(stats.pair_tau(answers, num_draws=10, num_bootstrap=2).tau)
    assert stats.predictor_tau(effect, answers, num_draws=10, num_bootstrap=2).tau == pytest.approx(implied, abs=0.03)


def test_leave_one_out_scores_skip_the_column_and_missing_values() -> None:
    log_lengths = np.array([[1.0, 2.0, 4.0], [3.0, np.nan, 5.0]])
    np.testing.assert_allclose(stats.leave_one_out_scores(log_lengths, 0), [3.0, 5.0])
    np.testing.assert_allclose(stats.leave_one_out_scores(log_lengths, 2), [1.5, 3.0])
    np.testing.assert_allclose(stats.leave_one_out_scores(log_lengths, 1, use_median=True), [2.5, 4.0])


def _sharegpt_record(record_id: str, prompt: str, response: str) -> dict:
    return {
        "id": record_id,
        "prompt": prompt,
        "response": response,
        "prompt_llama2_tokens": 3,
        "response_llama2_tokens": len(response.split()),
    }


def test_sharegpt_repeated_keeps_one_answer_per_conversation_and_drops_copies(tmp_path: Path) -> None:
    story = " ".join(f"word{i}" for i in range(40))
    records = [
        _sharegpt_record("a_0", "Hi", story),
        _sharegpt_record("a_1", "hi", "a later chunk of the same conversation"),  # same conversation
        _sharegpt_record("b_0", " HI ", story),  # the same answer shared again
        _sharegpt_record("c_0", "hi", story + " edited"),  # a lightly edited copy
        _sharegpt_record("d_0", "hi", "hello there, how can I help"),  # an independent answer
        _sharegpt_record("e_0", "only once", "a prompt with one answer"),
        _sharegpt_record("f_0", "twice, copied", "same"),
        _sharegpt_record("g_0", "Twice, copied", "same"),
    ]
    path = tmp_path / "sharegpt.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as stream:
        stream.writelines(json.dumps(record) + "\n" for record in records)
    repeated = sharegpt_repeated(path)
    assert repeated.texts == ["Hi"]
    np.testing.assert_array_equal(repeated.answers[0], [40, 6])
    assert repeated.num_answers == 2 and repeated.num_capped_answers == 0


def test_sample_files_join_runs_by_prompt_text_and_count_capped_answers(tmp_path: Path) -> None:
    def write(name: str, rows: list[tuple[str, int, str]]) -> Path:
        path = tmp_path / name
        lines = [json.dumps({"prompt": p, "num_output_tokens": n, "finish_reason": f}) for p, n, f in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    first = write(
        "a.jsonl", [("Tell me a joke", 30, "FINISH_REASON_EOS"), ("Write an essay", 512, "FINISH_REASON_LENGTH")]
    )
    second = write(
        "b.jsonl", [("write  an ESSAY", 400, "FINISH_REASON_EOS"), ("unanswered in a", 9, "FINISH_REASON_EOS")]
    )
    feedback = tmp_path / "feedback.jsonl"  # the predictor's feedback records name the fields differently
    feedback.write_text(
        json.dumps({"prompt_text": "WRITE AN ESSAY", "num_output_tokens": 512, "censored": True}) + "\n"
    )
    repeated = sample_files_repeated([first, second, feedback])
    assert repeated.texts == ["Write an essay"]
    np.testing.assert_array_equal(repeated.answers[0], [512, 400, 512])
    assert repeated.num_capped_answers == 2
    assert repeated.select([False]).texts == []
    with pytest.raises(ValueError, match="at least 2 sample files"):
        sample_files_repeated([first])
    with pytest.raises(FileNotFoundError, match="missing"):
        sample_files_repeated([first, tmp_path / "missing.jsonl"])


def test_ceiling_is_an_alise_predictor_command() -> None:
    args = build_parser().parse_args(["ceiling", "--samples", "a.jsonl", "--samples", "b.jsonl", "--name", "x"])
    assert args.samples == [Path("a.jsonl"), Path("b.jsonl")] and args.name == "x"


def test_ceiling_refuses_bad_sample_files_before_loading_anything(tmp_path: Path, capsys) -> None:
    """One sample file, or a missing one, is a usage error (status 2) named on stderr, before the model loads."""
    one = tmp_path / "one.jsonl"
    one.write_text("")
    assert predictor_cmd.main(["ceiling", "--model-dir", str(tmp_path / "no-model"), "--samples", str(one)]) == 2
    assert "at least 2 files" in capsys.readouterr().err
    missing = ["--samples", str(one), "--samples", str(tmp_path / "missing.jsonl")]
    assert predictor_cmd.main(["ceiling", "--model-dir", str(tmp_path / "no-model"), *missing]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


@requires_shared_data
def test_alpaca_eval_cross_model_predictor_ranks_each_served_generator() -> None:
    """On the real lengths, the other generators' mean log length ranks text_davinci_003's answers
    (a sanity floor, far under the measured ~0.5) on every instruction key."""
    generators, log_lengths = alpaca_eval_lengths(SHARED_DATA_DIR)
    matrix = np.stack(list(log_lengths.values()))
    column = generators.index("text_davinci_003")
    present = ~np.isnan(matrix[:, column])
    scores = stats.leave_one_out_scores(matrix, column)[present]
    assert len(generators) > 100 and matrix.shape[0] > 500
    assert kendall_tau_b(scores, matrix[present, column]) > 0.4
