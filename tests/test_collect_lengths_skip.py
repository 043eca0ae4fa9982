"""`alise collect-lengths --skip-answered`: answered prompts are never sent, the rest keep their seeds.

The prompt list and the gateway are replaced (load_prompts and _answer), so the test runs without
../shared/data and without a stack; what it checks is which requests collect() builds: their prompt
ids, their sampling seeds (seed * 1_000_003 + the index in the FULL list) and their order.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from services.cli import collect_lengths
from services.cli.collect_lengths import Prompt
from services.cli.main import main
from services.predictor.feedback_lengths import FORMAT, LengthsFile, LengthsHeader, PromptListSettings
from services.predictor.feedback_store import FeedbackRecord

SEED = 7
PROMPTS = [Prompt(f"sharegpt-c{index}", f"Question number {index}?") for index in range(6)]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(prompt id, sampling seed) of every request collect() sends, in the order sent."""
    requests: list[tuple[str, int]] = []

    async def fake_answer(stub, prompt: Prompt, request, timeout_s: float) -> dict:
        requests.append((prompt.prompt_id, request.sampling.seed))
        return {"prompt_id": prompt.prompt_id, "prompt": prompt.text, "num_output_tokens": 3}

    monkeypatch.setattr(collect_lengths, "load_prompts", lambda args: list(PROMPTS))
    monkeypatch.setattr(collect_lengths, "_answer", fake_answer)
    return requests


def _lengths_file(path: pathlib.Path, prompt_ids: list[str]) -> pathlib.Path:
    """A lengths file (repository form) answering prompt_ids; only the ids matter to --skip-answered."""
    lines = [json.dumps({"request_id": f"gw-{name}", "prompt_id": name}) for name in prompt_ids]
    header = LengthsHeader(FORMAT, "feedback-x.jsonl", "0" * 64, len(lines), PromptListSettings(6, 0, 1500, SEED))
    path.write_text(LengthsFile(header, lines).to_text(), encoding="utf-8")
    return path


def _feedback_file(path: pathlib.Path, texts: list[str]) -> pathlib.Path:
    """A predictor feedback JSONL: texts only, no prompt ids."""
    fields = {field.name: None for field in dataclasses.fields(FeedbackRecord)}
    records = [
        FeedbackRecord(**fields | {"request_id": f"gw-{n}", "prompt_text": text}) for n, text in enumerate(texts)
    ]
    path.write_text("".join(record.to_json() + "\n" for record in records), encoding="utf-8")
    return path


def _run(tmp_path: pathlib.Path, *extra: str) -> int:
    flags = ["--seed", str(SEED), "--concurrency", "1", "--out", str(tmp_path / "out.jsonl")]
    return main(["collect-lengths", "--address", "127.0.0.1:9", *flags, *extra])


@pytest.mark.parametrize("reverse", [False, True])
def test_answered_prompts_are_not_sent_and_the_rest_keep_their_list_seeds(
    tmp_path: pathlib.Path, sent: list, capsys: pytest.CaptureFixture, reverse: bool
) -> None:
    lengths = _lengths_file(tmp_path / "a.lengths.jsonl", ["sharegpt-c1"])
    feedback = _feedback_file(tmp_path / "feedback.jsonl", ["  QUESTION number\n2? "])  # other case and spaces
    earlier_out = tmp_path / "earlier.jsonl"
    earlier_out.write_text(json.dumps({"prompt_id": "sharegpt-c4", "prompt": "not matched by text"}) + "\n")
    skip = ["--skip-answered", str(lengths), "--skip-answered", str(feedback), "--skip-answered", str(earlier_out)]

    status = _run(tmp_path, *skip, *(["--reverse"] if reverse else []))

    expected = [(PROMPTS[index].prompt_id, SEED * 1_000_003 + index) for index in (0, 3, 5)]
    assert status == 0
    assert sent == (expected[::-1] if reverse else expected)
    assert "skipped 3 of 6 prompts" in capsys.readouterr().err


def test_without_skip_answered_every_prompt_is_sent(tmp_path: pathlib.Path, sent: list) -> None:
    assert _run(tmp_path) == 0
    assert sent == [(prompt.prompt_id, SEED * 1_000_003 + index) for index, prompt in enumerate(PROMPTS)]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read it"),
        ('{"request_id": "gw-1", "num_output_tokens": 3}\n', "neither a prompt id nor a prompt text"),
        ('{"format": "alise-feedback-lengths/0"}\n', "unknown format"),
        (f'{{"format": "{FORMAT}", "num_records": 1}}\n', "not a lengths file"),
        ("not json\n", "is not JSON"),
    ],
)
def test_an_unreadable_or_unknown_file_is_refused_before_sending(
    tmp_path: pathlib.Path, sent: list, capsys: pytest.CaptureFixture, content: str | None, message: str
) -> None:
    path = tmp_path / "answered.jsonl"
    if content is not None:
        path.write_text(content, encoding="utf-8")

    assert _run(tmp_path, "--skip-answered", str(path)) == 2
    assert sent == []
    error = capsys.readouterr().err
    assert "alise collect-lengths: error: --skip-answered" in error and message in error
