"""Feedback files without prompt texts: restore(export(F)) is F byte for byte, and every refusal.

A fake ../shared/data in tmp_path (a few ShareGPT first turns, a few text_davinci_003 instructions)
stands in for the real one; the last test restores the lengths files committed under
docs/benchmarks/smollm2/lengths against the real data and skips without it.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import pathlib

import pytest

from services.cli import feedback_lengths_cmd
from services.cli.collect_lengths_prompt_list import load_prompt_list
from services.cli.predictor_cmd import main
from services.predictor.feedback_lengths import (
    FeedbackLengthsError,
    LengthsProblem,
    PromptListSettings,
    export_lengths,
    parse_lengths,
    restore_feedback,
)
from services.predictor.feedback_store import FeedbackRecord
from tests.shared_data import requires_shared_data

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAREGPT_PROMPTS = [
    "Write a poem about the sea",
    "Explain\u2028line separators, naïvely 🙂",  # U+2028 stays raw in the JSON: splitting must not break it
    "What is 2 + 2?",
]
ALPACA_PROMPTS = ["List three fruits.", "Translate 'hello' to French."]
SETTINGS = PromptListSettings(num_sharegpt=3, num_alpaca=2, max_prompt_chars=1500, seed=0)
SETTINGS_FLAGS = ["--num-sharegpt", "3", "--num-alpaca", "2", "--max-prompt-chars", "1500"]


def _write_data(root: pathlib.Path, sharegpt: list[str], alpaca: list[str]) -> pathlib.Path:
    (root / "sharegpt").mkdir(parents=True)
    (root / "alpaca_eval").mkdir(parents=True)
    with gzip.open(root / "sharegpt" / "sharegpt_v3_first_turn.dev.jsonl.gz", "wt", encoding="utf-8") as lines:
        for index, text in enumerate(sharegpt):
            record = {"id": f"c{index}", "prompt": text, "prompt_llama2_tokens": 8, "response_llama2_tokens": 40}
            lines.write(json.dumps(record) + "\n")
    with gzip.open(root / "alpaca_eval" / "model_outputs_10_generators.dev.jsonl.gz", "wt", encoding="utf-8") as lines:
        for index, text in enumerate(alpaca):
            record = {"generator": "text_davinci_003", "instruction_idx": index, "instruction": text}
            lines.write(json.dumps(record | {"instruction_llama2_tokens": 6, "output_llama2_tokens": 30}) + "\n")
    return root


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return _write_data(tmp_path / "data", SHAREGPT_PROMPTS, ALPACA_PROMPTS)


def _record(index: int, text: str, *, censored: bool = False) -> FeedbackRecord:
    return FeedbackRecord(
        request_id=f"gw-{index:032x}",
        prompt_text=text,
        num_prompt_tokens=10 + index,
        num_output_tokens=512 if censored else 37 * index + 1,
        served_model="smollm2-135m-instruct",
        censored=censored,
        max_tokens=512,
        predicted_mean_tokens=None if index == 0 else 321.4567 + index,
        predicted_p50_tokens=300.0,
        predicted_p90_tokens=511.999,
        prediction_model_version="7c7a64e950e2",
        finished_at_unix_s=1796680000.123456 + index,
    )


def _feedback_file(directory: pathlib.Path, texts: list[str], name: str = "feedback-20261207.jsonl") -> pathlib.Path:
    path = directory / name
    directory.mkdir(parents=True, exist_ok=True)
    records = [_record(index, text, censored=index % 2 == 1) for index, text in enumerate(texts)]
    path.write_text("".join(record.to_json() + "\n" for record in records), encoding="utf-8")
    return path


def test_export_then_restore_gives_the_same_bytes(tmp_path, data_dir, capsys):
    texts = [SHAREGPT_PROMPTS[1], ALPACA_PROMPTS[0], SHAREGPT_PROMPTS[0], SHAREGPT_PROMPTS[1]]  # one asked twice
    feedback = _feedback_file(tmp_path / "runs", texts)
    lengths = tmp_path / "repo" / "feedback-20261207.lengths.jsonl"
    argv = ["feedback-lengths", "export", "--feedback", str(feedback), "--out", str(lengths)]
    assert main([*argv, *SETTINGS_FLAGS, "--data-dir", str(data_dir)]) == 0
    stored = lengths.read_text(encoding="utf-8")
    assert not any(text in stored for text in texts) and "naïvely" not in stored
    assert len(stored.split("\n")) == 1 + len(texts) + 1  # header, records, final newline
    out_dir = tmp_path / "restored"
    argv = ["feedback-lengths", "restore", "--lengths", str(lengths), "--out-dir", str(out_dir)]
    assert main([*argv, "--data-dir", str(data_dir)]) == 0
    restored = out_dir / "feedback-20261207.jsonl"
    assert restored.read_bytes() == feedback.read_bytes()
    sha = hashlib.sha256(feedback.read_bytes()).hexdigest()
    printed = capsys.readouterr().out
    assert printed.count(sha) == 3  # export's original and in-memory restore, then restore's
    assert "prompt list: 5 prompts, 3 answered here, 2 not" in printed
    assert main([*argv, "--data-dir", str(data_dir)]) == 0  # the same bytes again: a no-op
    restored.write_bytes(b"other\n")
    assert main([*argv, "--data-dir", str(data_dir)]) == 2  # never overwrites other contents
    assert "exists with other contents" in capsys.readouterr().err


def test_restore_builds_each_distinct_prompt_list_once(tmp_path, data_dir, monkeypatch):
    built: list[PromptListSettings] = []

    def counting_load(settings: PromptListSettings, directory: pathlib.Path | None) -> dict[str, str]:
        built.append(settings)
        return load_prompt_list(settings, directory)

    other = dataclasses.replace(SETTINGS, seed=1)
    argv = ["feedback-lengths", "restore", "--out-dir", str(tmp_path / "restored"), "--data-dir", str(data_dir)]
    for name, settings in (("a", SETTINGS), ("b", other), ("c", SETTINGS)):
        feedback = _feedback_file(tmp_path / "runs", [SHAREGPT_PROMPTS[0]], f"feedback-{name}.jsonl")
        prompts = load_prompt_list(settings, data_dir)
        lengths = export_lengths(
            feedback.read_bytes(), feedback_file=feedback.name, prompts=prompts, prompt_list=settings
        )
        (tmp_path / f"{name}.lengths.jsonl").write_text(lengths.to_text(), encoding="utf-8")
        argv += ["--lengths", str(tmp_path / f"{name}.lengths.jsonl")]
    monkeypatch.setattr(feedback_lengths_cmd, "load_prompt_list", counting_load)
    assert main(argv) == 0
    assert built == [SETTINGS, other]  # the third file shares the first one's list
    for name in "abc":
        restored = (tmp_path / "restored" / f"feedback-{name}.jsonl").read_bytes()
        assert restored == (tmp_path / "runs" / f"feedback-{name}.jsonl").read_bytes()


def test_a_prompt_not_in_the_data_is_refused(tmp_path, data_dir, capsys):
    feedback = _feedback_file(tmp_path / "runs", [SHAREGPT_PROMPTS[0], "my own private question", "and another"])
    prompts = load_prompt_list(SETTINGS, data_dir)
    with pytest.raises(FeedbackLengthsError) as refused:
        export_lengths(feedback.read_bytes(), feedback_file=feedback.name, prompts=prompts, prompt_list=SETTINGS)
    assert refused.value.problem is LengthsProblem.PROMPT_NOT_IN_LIST
    assert "2 of 3 records" in str(refused.value) and "gw-" + f"{1:032x}" in str(refused.value)
    lengths = tmp_path / "lengths.jsonl"
    argv = ["feedback-lengths", "export", "--feedback", str(feedback), "--out", str(lengths), *SETTINGS_FLAGS]
    assert main([*argv, "--data-dir", str(data_dir)]) == 2 and not lengths.exists()
    assert "dataset-prompt feedback only" in capsys.readouterr().err


def test_changed_data_text_is_a_sha_mismatch_at_its_record(tmp_path, data_dir):
    feedback = _feedback_file(tmp_path / "runs", [ALPACA_PROMPTS[1], SHAREGPT_PROMPTS[2]])
    prompts = load_prompt_list(SETTINGS, data_dir)
    lengths = export_lengths(feedback.read_bytes(), feedback_file=feedback.name, prompts=prompts, prompt_list=SETTINGS)
    parsed = parse_lengths(lengths.to_text())
    assert restore_feedback(parsed, prompts) == feedback.read_bytes()
    edited = [SHAREGPT_PROMPTS[0], SHAREGPT_PROMPTS[1], "What is 2 + 3?"]  # same id, other text
    tampered = load_prompt_list(SETTINGS, _write_data(tmp_path / "tampered", edited, ALPACA_PROMPTS))
    with pytest.raises(FeedbackLengthsError) as refused:
        restore_feedback(parsed, tampered)
    assert refused.value.problem is LengthsProblem.PROMPT_TEXT_CHANGED and "line 3" in str(refused.value)
    with pytest.raises(FeedbackLengthsError) as refused:
        restore_feedback(parsed, {key: value for key, value in prompts.items() if not key.startswith("alpaca")})
    assert refused.value.problem is LengthsProblem.UNKNOWN_PROMPT_ID


def test_lines_that_would_not_come_back_identical_are_refused(tmp_path, data_dir):
    prompts = load_prompt_list(SETTINGS, data_dir)
    canonical = _record(1, SHAREGPT_PROMPTS[0]).to_json() + "\n"
    for broken in (
        canonical.replace(",", ", "),  # another writer's spacing
        canonical[:-1],  # no final newline
        canonical + '{"request_id": "torn", "prompt_te',  # a torn last line
        canonical + "\n",  # a blank line
    ):
        with pytest.raises(FeedbackLengthsError) as refused:
            export_lengths(broken.encode(), feedback_file="f.jsonl", prompts=prompts, prompt_list=SETTINGS)
        assert refused.value.problem is LengthsProblem.NOT_CANONICAL
    lengths = export_lengths(canonical.encode(), feedback_file="f.jsonl", prompts=prompts, prompt_list=SETTINGS)
    header, record = lengths.to_text().split("\n")[:2]
    for bad in (header.replace("/1", "/9") + "\n" + record, header + "\n", "{}\n" + record):
        with pytest.raises(FeedbackLengthsError) as refused:
            parse_lengths(bad)
        assert refused.value.problem is LengthsProblem.BAD_FORMAT


@requires_shared_data
def test_committed_lengths_files_restore_to_their_recorded_sha256(tmp_path):
    paths = sorted((REPO_ROOT / "docs" / "benchmarks" / "smollm2" / "lengths").glob("*.lengths.jsonl"))
    if not paths:
        pytest.skip("no lengths file committed under docs/benchmarks/smollm2/lengths")
    argv = ["feedback-lengths", "restore", "--out-dir", str(tmp_path)]
    assert main([*argv, *(item for path in paths for item in ("--lengths", str(path)))]) == 0
    for path in paths:
        header = parse_lengths(path.read_text(encoding="utf-8")).header
        restored = (tmp_path / header.feedback_file).read_bytes()
        assert hashlib.sha256(restored).hexdigest() == header.feedback_sha256
