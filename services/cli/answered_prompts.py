"""Which prompts of the collect-lengths list a file already answered (`collect-lengths --skip-answered`).

Why: a collection that continues an earlier one must not answer a prompt twice (a second sample of
the same prompt adds little and costs minutes on a CPU stack), and the earlier answers may be kept
in any of three forms:

    lengths file (repository)       line 1 {"format": "alise-feedback-lengths/1", ...}, records with "prompt_id"
    collect-lengths --out JSONL     {"prompt_id": ..., "prompt": ..., ...}         -> matched by prompt id
    feedback JSONL (the predictor)  {"request_id": ..., "prompt_text": ..., ...}   -> matched by text key

A record without a prompt id is matched by the same normalized text key that load_prompts
deduplicates by, so a prompt the gateway stored with other case or whitespace is still found.
Invariant: a file this module cannot read as one of the three raises AnsweredFileError; it never
skips nothing silently because of a typo in a path or a file of another kind.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

from services.predictor.feedback_lengths import FORMAT, FeedbackLengthsError, parse_lengths, prompt_ids

PROMPT_ID_FIELDS = ("prompt_id",)  # a lengths record, a collect-lengths --out line
PROMPT_TEXT_FIELDS = ("prompt_text", "prompt")  # a feedback record, a collect-lengths --out line


class AnsweredFileError(ValueError):
    """A --skip-answered file that is unreadable or of no known kind (the message names the file)."""


@dataclass
class AnsweredPrompts:
    """Prompts answered somewhere: by prompt id and by normalized text key."""

    prompt_ids: set[str] = field(default_factory=set)  # collect-lengths prompt ids (sharegpt-<id>, alpaca-<idx>)
    text_keys: set[str] = field(default_factory=set)  # prompt_key() of texts answered without an id

    def contains(self, prompt_id: str, text_key: str) -> bool:
        return prompt_id in self.prompt_ids or text_key in self.text_keys


def read_answered(paths: Iterable[pathlib.Path], prompt_key: Callable[[str], str]) -> AnsweredPrompts:
    """The prompts the files answered; AnsweredFileError for a file that is none of the three kinds."""
    answered = AnsweredPrompts()
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise AnsweredFileError(f"--skip-answered {path}: cannot read it ({error})") from error
        _read_one(path, text, answered, prompt_key)
    return answered


def _read_one(path: pathlib.Path, text: str, answered: AnsweredPrompts, prompt_key: Callable[[str], str]) -> None:
    lines = [line for line in text.split("\n") if line.strip()]
    records = [_json_object(path, number, line) for number, line in enumerate(lines, start=1)]
    if records and "format" in records[0]:
        if records[0]["format"] != FORMAT:
            raise AnsweredFileError(f"--skip-answered {path}: unknown format {records[0]['format']!r}")
        try:
            answered.prompt_ids |= prompt_ids([parse_lengths(text)])
        except (FeedbackLengthsError, KeyError) as error:
            raise AnsweredFileError(f"--skip-answered {path}: not a lengths file ({error})") from error
        return
    for number, record in enumerate(records, start=1):
        prompt_id = next((record[name] for name in PROMPT_ID_FIELDS if record.get(name)), None)
        prompt_text = next((record[name] for name in PROMPT_TEXT_FIELDS if record.get(name)), None)
        if prompt_id is not None:
            answered.prompt_ids.add(prompt_id)
        elif prompt_text is not None:
            answered.text_keys.add(prompt_key(prompt_text))
        else:
            raise AnsweredFileError(
                f"--skip-answered {path}: line {number} has neither a prompt id nor a prompt text "
                "(expected a lengths file, a feedback JSONL or a collect-lengths --out JSONL)"
            )


def _json_object(path: pathlib.Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError as error:
        raise AnsweredFileError(f"--skip-answered {path}: line {number} is not JSON ({error})") from error
    if not isinstance(record, dict):
        raise AnsweredFileError(f"--skip-answered {path}: line {number} is not a JSON object")
    return record
