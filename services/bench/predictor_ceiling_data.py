"""Prompts with several independent answers, for `alise predictor ceiling` (see predictor_ceiling_stats).

- ShareGPT: records whose normalized prompt text (data.prompt_key) occurs in >= 2 conversations. The
  same conversation is often shared more than once with the same answer, sometimes lightly edited
  (772 vs 759 tokens, 148 vs 147): such copies are not independent samples, so a prompt keeps one
  answer per conversation and drops an answer whose words match one it already has by
  >= COPY_SIMILARITY (difflib's ratio over the word sequences; regenerated answers share far less).
- Sample files: JSONL of one model answering the same prompts in separate runs with different seeds,
  joined by normalized prompt text: `alise collect-lengths` output (prompt, num_output_tokens,
  finish_reason) or the predictor's feedback files (prompt_text, num_output_tokens, censored). An
  answer stopped by max_tokens counts at its cap, as the served label does.
"""

from __future__ import annotations

import difflib
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from services.predictor import data

CAPPED_FINISH_REASONS = frozenset({"FINISH_REASON_LENGTH", "LENGTH"})
COPY_SIMILARITY = 0.8  # word-sequence similarity at or above which two answers count as one copied answer


@dataclass(frozen=True)
class RepeatedPrompts:
    """Prompts with >= 2 independent answers each."""

    texts: list[str]  # one prompt text per prompt
    num_prompt_tokens: list[int]  # its length (Llama-2 tokens for ShareGPT; served tokens for samples)
    answers: list[np.ndarray]  # output tokens of its answers, >= 2 each
    capped: list[np.ndarray]  # per answer: stopped by max_tokens (sample files; never for ShareGPT)

    @property
    def num_answers(self) -> int:
        return sum(a.size for a in self.answers)

    @property
    def num_capped_answers(self) -> int:
        return int(sum(c.sum() for c in self.capped))

    def select(self, keep: Sequence[bool]) -> RepeatedPrompts:
        """The prompts where keep is true."""
        rows = [i for i, flag in enumerate(keep) if flag]
        return RepeatedPrompts(
            [self.texts[i] for i in rows],
            [self.num_prompt_tokens[i] for i in rows],
            [self.answers[i] for i in rows],
            [self.capped[i] for i in rows],
        )


def is_copy(words: list[str], kept: list[list[str]]) -> bool:
    """Whether an answer (lower-cased words) is a copy, maybe lightly edited, of one already kept."""
    for other in kept:
        matcher = difflib.SequenceMatcher(None, words, other, autojunk=False)
        if matcher.real_quick_ratio() >= COPY_SIMILARITY and matcher.ratio() >= COPY_SIMILARITY:
            return True
    return False


def sharegpt_repeated(path: Path) -> RepeatedPrompts:
    """ShareGPT prompts answered in >= 2 conversations by >= 2 different answer texts."""
    by_prompt: dict[str, list[dict]] = {}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            if int(record["prompt_llama2_tokens"]) >= 1 and int(record["response_llama2_tokens"]) >= 1:
                by_prompt.setdefault(data.prompt_key(record["prompt"]), []).append(record)
    texts, prompt_tokens, answers = [], [], []
    for records in by_prompt.values():
        conversations: set[str] = set()
        kept: list[list[str]] = []
        lengths = []
        for record in records:
            conversation = str(record["id"]).rsplit("_", 1)[0]
            words = record["response"].lower().split()
            if conversation not in conversations and not is_copy(words, kept):
                conversations.add(conversation)
                kept.append(words)
                lengths.append(int(record["response_llama2_tokens"]))
        if len(lengths) >= 2:
            texts.append(records[0]["prompt"])
            prompt_tokens.append(int(records[0]["prompt_llama2_tokens"]))
            answers.append(np.asarray(lengths, np.float64))
    return RepeatedPrompts(texts, prompt_tokens, answers, [np.zeros(a.size, bool) for a in answers])


def sample_files_repeated(paths: Sequence[Path]) -> RepeatedPrompts:
    """Prompts answered in >= 2 of the files (one answer per file and prompt: the first)."""
    if len(paths) < 2:
        raise ValueError(f"need at least 2 sample files, got {len(paths)}")
    by_prompt: dict[str, dict[int, dict]] = {}
    for index, path in enumerate(paths):
        if not path.is_file():
            raise FileNotFoundError(f"sample file not found: {path}")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                record["prompt"] = record["prompt"] if "prompt" in record else record["prompt_text"]
                by_prompt.setdefault(data.prompt_key(record["prompt"]), {}).setdefault(index, record)
    texts, prompt_tokens, answers, capped = [], [], [], []
    for runs in by_prompt.values():
        if len(runs) >= 2:
            records = list(runs.values())
            texts.append(records[0]["prompt"])
            prompt_tokens.append(max(1, int(records[0].get("num_prompt_tokens", 1))))
            answers.append(np.asarray([int(r["num_output_tokens"]) for r in records], np.float64))
            capped.append(np.asarray([_is_capped(r) for r in records], bool))
    return RepeatedPrompts(texts, prompt_tokens, answers, capped)


def _is_capped(record: dict) -> bool:
    return record.get("finish_reason", "") in CAPPED_FINISH_REASONS or bool(record.get("censored", False))


def alpaca_eval_lengths(data_dir: Path) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """(generators, instruction key -> log output tokens per generator, NaN where missing)."""
    generators, lengths = data.load_all_generator_lengths(data_dir)
    return generators, {data.prompt_key(text): np.log(row) for text, row in lengths.items()}
