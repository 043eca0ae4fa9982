"""The three prompt sets of `alise bench spec`, chosen from ShareGPT first turns by stated rules.

Prompt lookup (n-gram drafting) pays off where the answer repeats the prompt, so the benchmark
measures three kinds of request apart. Every ShareGPT first turn that starts a conversation lands in
at most one set, tried in this order:

    code-edit           the prompt holds code (a ``` fence, or >= 3 lines that look like code) and
                        its prose (first or last 300 characters) asks for an edit: fix, modify,
                        change, refactor, update, convert, rewrite, optimise, improve, add, debug,
                        edit, rename, clean up; 50..700 Llama-2 tokens
    summarise-rewrite   no code; the first 300 characters ask to summarise, rewrite, paraphrase,
                        rephrase, reword, proofread, shorten, condense or simplify (not "don't ..."),
                        and the prompt carries the text: 150..700 Llama-2 tokens
    open-chat           no code and none of those verbs anywhere; 4..256 Llama-2 tokens

Selection is deterministic: each set's candidates in file order are permuted with
numpy.default_rng(seed + set index); the first ones whose chat-templated prompt fits
max_prompt_tokens (the served tokenizer's count) are taken, each prompt text once (ShareGPT holds
some first turns twice under two ids: 3 of the 45 summarise-rewrite candidates; before session 13 the
set's 6th prompt was its 1st again, a verbatim copy counted twice in every run of 6 or more prompts).
The data is read at run time only (research licence; ../shared/data/README.md), never copied into the
repository.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from services.bench.workload import SHAREGPT_FILE, resolve_data_dir
from services.common.chat_template import ChatRole, ChatTurn
from services.common.tokenizer import Tokenizer

PROSE_CHARS = 300  # where the instruction of a code or rewrite prompt is looked for: its start (or end)
_REWRITE_VERB_WORDS = (
    r"\b(summari[sz]e|rewrite|re-write|paraphrase|rephrase|reword|proofread|shorten|condense|simplify)\b"
)
_REWRITE_VERBS = re.compile(r"(?<!don't )(?<!do not )(?<!not )" + _REWRITE_VERB_WORDS, re.IGNORECASE)  # asked for
_ANY_REWRITE_VERB = re.compile(_REWRITE_VERB_WORDS, re.IGNORECASE)  # mentioned at all
_EDIT_VERBS = re.compile(
    r"\b(fix|modify|change|refactor|update|convert|rewrite|re-write|optimi[sz]e|improve|add|debug|edit|rename|"
    r"clean up)\b",
    re.IGNORECASE,
)
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import |#include|return\b|public |private |const |let |var |function\b)"
    r"|[;{]\s*$|^\s*}",
    re.MULTILINE,
)
MIN_CODE_LINES = 3


class PromptSetName(StrEnum):
    """The three workloads, in the order the benchmark runs and reports them."""

    SUMMARISE_REWRITE = "summarise-rewrite"  # the answer restates a text given in the prompt
    CODE_EDIT = "code-edit"  # the answer repeats most of the code given in the prompt
    OPEN_CHAT = "open-chat"  # the rest: little of the answer is in the prompt


@dataclass(frozen=True)
class TokenRange:
    """Llama-2 prompt tokens (the dataset's own count) a set accepts, inclusive."""

    min_tokens: int
    max_tokens: int

    def holds(self, num_tokens: int) -> bool:
        return self.min_tokens <= num_tokens <= self.max_tokens


PROMPT_TOKEN_RANGES = {
    PromptSetName.SUMMARISE_REWRITE: TokenRange(150, 700),
    PromptSetName.CODE_EDIT: TokenRange(50, 700),
    PromptSetName.OPEN_CHAT: TokenRange(4, 256),
}


@dataclass(frozen=True)
class SpecPrompt:
    """One benchmark prompt, ready for the engine."""

    prompt_id: str  # the ShareGPT record id
    prompt_set: PromptSetName
    token_ids: tuple[int, ...]  # the user turn through the served model's chat template (or BOS + text)


def has_code(text: str) -> bool:
    return "```" in text or len(_CODE_LINE.findall(text)) >= MIN_CODE_LINES


def classify(text: str, num_llama2_tokens: int) -> PromptSetName | None:
    """The set a prompt belongs to by the rules above; None when it fits none."""
    prose = text[:PROSE_CHARS] + "\n" + text[-PROSE_CHARS:]
    if has_code(text):
        if _EDIT_VERBS.search(prose) and PROMPT_TOKEN_RANGES[PromptSetName.CODE_EDIT].holds(num_llama2_tokens):
            return PromptSetName.CODE_EDIT
        return None
    if _REWRITE_VERBS.search(text[:PROSE_CHARS]):
        return (
            PromptSetName.SUMMARISE_REWRITE
            if PROMPT_TOKEN_RANGES[PromptSetName.SUMMARISE_REWRITE].holds(num_llama2_tokens)
            else None
        )
    if _ANY_REWRITE_VERB.search(text) is None and PROMPT_TOKEN_RANGES[PromptSetName.OPEN_CHAT].holds(num_llama2_tokens):
        return PromptSetName.OPEN_CHAT
    return None


def read_sharegpt(data_dir: pathlib.Path | None = None) -> Iterator[dict[str, Any]]:
    """ShareGPT first-turn records (FileNotFoundError names the file when the data is absent)."""
    path = resolve_data_dir(data_dir) / SHAREGPT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"ShareGPT data not found: {path} (set $ALISE_SHARED_DATA or --data-dir)")
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def candidates_by_set(records: Iterable[Mapping[str, Any]]) -> dict[PromptSetName, list[Mapping[str, Any]]]:
    """Conversation-starting records per set, in the order given."""
    sets: dict[PromptSetName, list[Mapping[str, Any]]] = {name: [] for name in PromptSetName}
    for record in records:
        if not record.get("is_conversation_start", True):
            continue
        name = classify(record["prompt"], int(record["prompt_llama2_tokens"]))
        if name is not None:
            sets[name].append(record)
    return sets


def encode_prompt(text: str, tokenizer: Tokenizer) -> list[int]:
    """The prompt as the gateway would send a one-message chat: through the chat template when the
    tokenizer has one, else BOS + text (the tiny test model's bare SentencePiece tokenizer)."""
    if tokenizer.chat_template is not None:
        return tokenizer.encode_chat([ChatTurn(ChatRole.USER, text)])
    return tokenizer.encode(text, add_bos=True)


def select_prompt_sets(
    records: Iterable[Mapping[str, Any]],
    tokenizer: Tokenizer,
    *,
    num_prompts: int,
    seed: int,
    max_prompt_tokens: int,
) -> dict[PromptSetName, list[SpecPrompt]]:
    """num_prompts prompts per set (distinct texts), deterministic for seed; ValueError when a set has too few."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    selected = {}
    for index, (name, candidates) in enumerate(candidates_by_set(records).items()):
        order = np.random.default_rng(seed + index).permutation(len(candidates))
        chosen = _first_distinct_fitting(
            (candidates[position] for position in order.tolist()), name, tokenizer, num_prompts, max_prompt_tokens
        )
        if len(chosen) < num_prompts:
            raise ValueError(
                f"prompt set {name.value}: {len(chosen)} prompts fit {max_prompt_tokens} tokens, {num_prompts} wanted"
            )
        selected[name] = chosen
    return selected


def _first_distinct_fitting(
    records: Iterable[Mapping[str, Any]], name: PromptSetName, tokenizer: Tokenizer, num_prompts: int, max_tokens: int
) -> list[SpecPrompt]:
    """Up to num_prompts of the records, in order: each text once, its chat-templated prompt <= max_tokens."""
    chosen: list[SpecPrompt] = []
    texts: set[str] = set()
    for record in records:
        if record["prompt"] in texts:
            continue
        texts.add(record["prompt"])
        token_ids = encode_prompt(record["prompt"], tokenizer)
        if len(token_ids) <= max_tokens:
            chosen.append(SpecPrompt(str(record["id"]), name, tuple(token_ids)))
        if len(chosen) == num_prompts:
            break
    return chosen
