"""Finished requests reported by the gateway: stored append-only, read back for retraining.

Layout of a feedback directory (one JSON object per line, one file per UTC day):

    feedback-20250101.jsonl    {"request_id": ..., "prompt_text": ..., "num_output_tokens": ..., ...}
    feedback-20250102.jsonl

Why JSONL files: appends are atomic enough per line for one writer process, a person can read and
grep them, and `alise predictor train --from-feedback DIR` reads them with nothing but json.
Invariants: records are only appended (never rewritten); a line that does not parse (a torn last
line after a crash) is skipped on reading, never fatal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

FILE_PREFIX = "feedback-"
FILE_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class FeedbackRecord:
    """One finished request: what was asked, how long the answer really was, what we predicted."""

    request_id: str  # gateway request id
    prompt_text: str  # the prompt ("" when unknown)
    num_prompt_tokens: int  # prompt length in the served model's tokens
    num_output_tokens: int  # tokens generated (> 0)
    served_model: str  # model that generated them
    censored: bool  # finished by LENGTH: the true length is >= num_output_tokens
    max_tokens: int  # max_tokens in force (0 = unknown)
    predicted_mean_tokens: float | None  # the predictor's mean, None when it did not make the estimate
    predicted_p50_tokens: float | None  # the predictor's p50, None likewise
    predicted_p90_tokens: float | None  # the predictor's p90, None likewise
    prediction_model_version: str  # model that made the prediction ("" when none)
    finished_at_unix_s: float  # wall clock at finish, seconds since the epoch

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "FeedbackRecord":
        raw = json.loads(line)
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in names})


class FeedbackStore:
    """Appends records to the day's file under a directory; thread-safe (one lock per store)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.num_stored = 0  # records appended by this process

    def _path_for(self, unix_s: float) -> Path:
        day = time.strftime("%Y%m%d", time.gmtime(unix_s))
        return self.directory / f"{FILE_PREFIX}{day}{FILE_SUFFIX}"

    def append(self, records: Sequence[FeedbackRecord]) -> None:
        """Writes records (blocking file I/O: call from a worker thread in async code)."""
        if not records:
            return
        lines = "".join(record.to_json() + "\n" for record in records)
        with self._lock:
            with self._path_for(time.time()).open("a", encoding="utf-8") as stream:
                stream.write(lines)
            self.num_stored += len(records)


def read_feedback(directory: Path) -> Iterator[FeedbackRecord]:
    """Every parsable record under directory, oldest file first; FileNotFoundError if it is missing."""
    if not directory.is_dir():
        raise FileNotFoundError(f"feedback directory not found: {directory}")
    for path in sorted(directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}")):
        yield from read_feedback_file(path)


def read_feedback_file(path: Path) -> Iterator[FeedbackRecord]:
    """Every parsable record of one feedback file (a torn or foreign line is skipped and logged)."""
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield FeedbackRecord.from_json(line)
            except (ValueError, TypeError) as error:
                log.warning("skipping unreadable line %d of %s (%s)", number, path, error)
