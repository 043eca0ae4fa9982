"""Feedback files without their prompt texts: kept in the repository, restored byte for byte.

Why: a model's metadata.json lists the sha256 of every feedback file it was trained on, and those
files hold dataset prompts (ShareGPT, AlpacaEval) that are research-licensed and may never enter the
repository. The lengths, the rest of each record and an id of its prompt are enough, because the
texts can be read again at run time from ../shared/data through the collect-lengths prompt list:

    feedback-20261207.jsonl            --export-->  feedback-20261207.lengths.jsonl  (in the repository)
        {"request_id":..,"prompt_text":"..",..}       line 1:   header (file name, sha256, prompt list)
                                                      line k+1: record k without "prompt_text",
                                                                + "prompt_id", "prompt_sha256"
    feedback-20261207.jsonl (same sha256)  <--restore--  lengths file + the prompt list's texts

Invariants: restore(export(F)) is F byte for byte. Export proves it before it writes anything (it
restores in memory and compares the sha256) and refuses a file it cannot reproduce: a line that
FeedbackRecord would not write the same way, or a prompt that is not in the prompt list (a user's
own prompt: its text exists nowhere else, so the command is for dataset-prompt feedback only).
`prompt_sha256` is the sha256 of the exact text, not of a normalized one: byte identity needs the
exact text, and a changed data file is then named at its record instead of only failing the
whole file's sha256.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from services.predictor.feedback_store import FeedbackRecord

FORMAT = "alise-feedback-lengths/1"  # header "format": bump when the layout of a line changes
PROMPT_ID_FIELD = "prompt_id"  # the collect-lengths prompt id (sharegpt-<id>, alpaca-<idx>)
PROMPT_SHA_FIELD = "prompt_sha256"  # sha256 of the exact prompt text, UTF-8
TEXT_FIELD = "prompt_text"  # the one FeedbackRecord field left out
RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(FeedbackRecord) if field.name != TEXT_FIELD)


class LengthsProblem(enum.Enum):
    """Why a feedback file cannot be exported or a lengths file cannot be restored."""

    NOT_CANONICAL = "not-canonical"  # a feedback line FeedbackRecord would not write byte for byte
    PROMPT_NOT_IN_LIST = "prompt-not-in-list"  # a record's text is not a prompt of the list (user prompt)
    UNKNOWN_PROMPT_ID = "unknown-prompt-id"  # a lengths record names a prompt the list does not have
    PROMPT_TEXT_CHANGED = "prompt-text-changed"  # the list's text for an id has another sha256
    SHA256_MISMATCH = "sha256-mismatch"  # the restored bytes differ from the original's sha256
    BAD_FORMAT = "bad-format"  # a lengths file this code did not write


class FeedbackLengthsError(ValueError):
    """A refusal with its reason as an enum (tests and callers branch on `problem`, not on text)."""

    def __init__(self, problem: LengthsProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True)
class PromptListSettings:
    """The collect-lengths flags that rebuild the prompt list (same prompts, same ids, same texts);
    its answering flags do not change the list. Built into the list by
    services/cli/collect_lengths_prompt_list.py. The field names and their order are the header's
    "prompt_list" layout, so lengths files already written keep parsing."""

    num_sharegpt: int  # --num-sharegpt: ShareGPT first turns drawn (before dedup and the character cap)
    num_alpaca: int  # --num-alpaca: AlpacaEval instructions drawn
    max_prompt_chars: int  # --max-prompt-chars: longer prompts are left off the list
    seed: int  # --seed: which prompts


@dataclass(frozen=True)
class LengthsHeader:
    """Line 1 of a lengths file: what to rebuild and how to check it."""

    format: str  # FORMAT
    feedback_file: str  # the original file's name (metadata.json keys it as feedback/<name>)
    feedback_sha256: str  # the original file's sha256 (restore must reproduce it)
    num_records: int  # records (lines) in the file
    prompt_list: PromptListSettings  # where the texts come from


@dataclass(frozen=True)
class LengthsFile:
    """A lengths file in memory: the header and one JSON line per record (text left out)."""

    header: LengthsHeader
    record_lines: list[str]  # without their newline

    def to_text(self) -> str:
        return "".join(line + "\n" for line in [_dumps(dataclasses.asdict(self.header)), *self.record_lines])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _lines(text: str) -> list[str]:
    """Lines split at "\n" only, each with its "\n" (the last without, if the text lacks one).

    Not str.splitlines: that also splits at U+2028, U+0085 and others, which json.dumps with
    ensure_ascii=False leaves unescaped inside prompt texts.
    """
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def _canonical_records(feedback: bytes) -> list[FeedbackRecord]:
    """Each line as a record, refusing any line FeedbackRecord.to_json would not write identically."""
    records = []
    for number, line in enumerate(_lines(feedback.decode("utf-8")), start=1):
        try:
            record = FeedbackRecord.from_json(line)
            canonical = record.to_json() + "\n" == line
        except (ValueError, TypeError) as error:
            raise FeedbackLengthsError(
                LengthsProblem.NOT_CANONICAL, f"line {number} is no feedback record ({error})"
            ) from error
        if not canonical:
            raise FeedbackLengthsError(
                LengthsProblem.NOT_CANONICAL,
                f"line {number} would not be written back byte for byte (torn, edited or from another version)",
            )
        records.append(record)
    return records


def export_lengths(
    feedback: bytes, *, feedback_file: str, prompts: Mapping[str, str], prompt_list: PromptListSettings
) -> LengthsFile:
    """The text-free form of a feedback file; prompts: prompt id -> text, the list's order.

    Refuses (FeedbackLengthsError) when a line is not canonical, when any record's text is not in
    `prompts`, or when restoring the result would not give `feedback` back byte for byte.
    """
    id_by_text: dict[str, str] = {}
    for prompt_id, text in prompts.items():
        id_by_text.setdefault(text, prompt_id)
    records = _canonical_records(feedback)
    missing = [record for record in records if record.prompt_text not in id_by_text]
    if missing:
        raise FeedbackLengthsError(
            LengthsProblem.PROMPT_NOT_IN_LIST,
            f"{len(missing)} of {len(records)} records have a prompt that is not in the prompt list "
            f"(first: request {missing[0].request_id}); their text exists only in the feedback file (a user's "
            "own prompts?), so it cannot be left out: export is for dataset-prompt feedback only",
        )
    lines = [_text_free_line(record, id_by_text[record.prompt_text]) for record in records]
    header = LengthsHeader(FORMAT, feedback_file, sha256_hex(feedback), len(records), prompt_list)
    lengths = LengthsFile(header, lines)
    restore_feedback(lengths, prompts)  # the proof: refuses unless the restored sha256 is feedback's
    return lengths


def _text_free_line(record: FeedbackRecord, prompt_id: str) -> str:
    fields = {name: value for name, value in dataclasses.asdict(record).items() if name != TEXT_FIELD}
    fields[PROMPT_ID_FIELD] = prompt_id
    fields[PROMPT_SHA_FIELD] = sha256_hex(record.prompt_text.encode("utf-8"))
    return _dumps(fields)


def restore_feedback(lengths: LengthsFile, prompts: Mapping[str, str]) -> bytes:
    """The original feedback file's bytes; FeedbackLengthsError unless its sha256 is the header's."""
    lines = []
    for number, line in enumerate(lengths.record_lines, start=2):
        fields = json.loads(line)
        prompt_id, prompt_sha = fields.pop(PROMPT_ID_FIELD, None), fields.pop(PROMPT_SHA_FIELD, None)
        if prompt_id is None or prompt_sha is None or tuple(fields) != RECORD_FIELDS:
            raise FeedbackLengthsError(LengthsProblem.BAD_FORMAT, f"line {number} is not a text-free feedback record")
        text = prompts.get(prompt_id)
        if text is None:
            raise FeedbackLengthsError(
                LengthsProblem.UNKNOWN_PROMPT_ID,
                f"line {number}: prompt {prompt_id} is not in the prompt list {lengths.header.prompt_list}",
            )
        if sha256_hex(text.encode("utf-8")) != prompt_sha:
            raise FeedbackLengthsError(
                LengthsProblem.PROMPT_TEXT_CHANGED,
                f"line {number}: the data's text of prompt {prompt_id} is not the one answered (sha256 differs): "
                "is ../shared/data another version?",
            )
        lines.append(FeedbackRecord(prompt_text=text, **fields).to_json() + "\n")
    restored = "".join(lines).encode("utf-8")
    if sha256_hex(restored) != lengths.header.feedback_sha256:
        raise FeedbackLengthsError(
            LengthsProblem.SHA256_MISMATCH,
            f"restored {lengths.header.feedback_file} has sha256 {sha256_hex(restored)}, "
            f"not the original's {lengths.header.feedback_sha256}",
        )
    return restored


def parse_lengths(text: str) -> LengthsFile:
    """A lengths file's text as written by LengthsFile.to_text (FeedbackLengthsError otherwise)."""
    lines = [line.rstrip("\n") for line in _lines(text)]
    try:
        raw = json.loads(lines[0]) if lines else {}
        settings = PromptListSettings(**raw.pop("prompt_list"))
        header = LengthsHeader(prompt_list=settings, **raw)
    except (KeyError, TypeError, ValueError) as error:
        raise FeedbackLengthsError(LengthsProblem.BAD_FORMAT, f"no lengths-file header on line 1 ({error})") from error
    if header.format != FORMAT or header.num_records != len(lines) - 1:
        raise FeedbackLengthsError(
            LengthsProblem.BAD_FORMAT,
            f"header says {header.format!r} with {header.num_records} records; expected {FORMAT!r} "
            f"and found {len(lines) - 1} record lines",
        )
    return LengthsFile(header, lines[1:])


def prompt_ids(lengths: Sequence[LengthsFile]) -> set[str]:
    """Every prompt id the files name (to report how much of a prompt list is covered)."""
    return {json.loads(line)[PROMPT_ID_FIELD] for file in lengths for line in file.record_lines}
