"""Training examples for the output-length predictor, read from ../shared/data (see its README).

An example is one prompt and the length of one real answer to it. Examples carry a `group_id`:
examples sharing it (chunks of one ShareGPT conversation; one AlpacaEval instruction answered by
several models) always land on the same side of the train / held-out split, so held-out metrics
never reward memorizing a prompt seen in training.

Token counts are Llama-2 SentencePiece counts; the served model's tokenizer (Mistral 7B v0.1,
also a 32,000-token SentencePiece) counts within a few percent of them, which the log-scale
features absorb.
"""

from __future__ import annotations

import dataclasses
import enum
import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

SHAREGPT_FILE = "sharegpt/sharegpt_v3_first_turn.dev.jsonl.gz"
ALPACA_EVAL_FILE = "alpaca_eval/model_outputs_10_generators.dev.jsonl.gz"
ALL_GENERATOR_LENGTHS_FILE = "alpaca_eval/output_lengths_all_generators.dev.csv.gz"
SOURCE_SHAREGPT = "sharegpt"
ALPACA_EVAL_SOURCE_PREFIX = "alpaca_eval:"
JSONL_SOURCE_PREFIX = "jsonl:"
# The generators of ALPACA_EVAL_FILE (see ../shared/data/README.md).
ALPACA_EVAL_GENERATORS: tuple[str, ...] = (
    "text_davinci_003",
    "alpaca-7b",
    "vicuna-7b",
    "llama-2-7b-chat-hf",
    "Meta-Llama-3-8B-Instruct",
    "Mistral-7B-Instruct-v0.2",
    "Qwen1.5-7B-Chat",
    "gpt-3.5-turbo-0613",
    "gpt4_1106_preview",
    "gpt-4o-2024-05-13",
)


class DataFormat(enum.Enum):
    """Record layouts `load_file` understands, told apart by their fields."""

    SHAREGPT = "sharegpt"  # prompt, response_llama2_tokens, ...
    ALPACA_EVAL = "alpaca_eval"  # generator, instruction, output_llama2_tokens, ...
    PLAIN = "plain"  # prompt, output_tokens [, prompt_tokens, id]
    FEEDBACK = "feedback"  # a feedback-*.jsonl of the predictor's store: prompt_text, num_output_tokens, served_model


@dataclass(frozen=True)
class LengthExample:
    """One prompt with the length of a real answer to it."""

    prompt_text: str  # the user's prompt
    num_prompt_tokens: int  # prompt length in Llama-2 tokens (> 0)
    num_output_tokens: int  # answer length in Llama-2 tokens (> 0): the training target
    source: str  # "sharegpt" or "alpaca_eval:<generator>"
    group_id: str  # examples with the same group_id are never split between train and held-out
    is_conversation_start: bool = True  # False for a later chunk of a split ShareGPT conversation


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (recorded in metadata.json for every data file used)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_jsonl_gz(path: Path) -> Iterator[dict]:
    """Records of a JSONL file, gzip-compressed when its name ends in .gz."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def prompt_key(prompt: str) -> str:
    """Prompts equal up to case and whitespace share a key (a conversation shared twice, "hi")."""
    return "prompt:" + hashlib.sha256(" ".join(prompt.lower().split()).encode("utf-8")).hexdigest()[:16]


def _connected_groups(links: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Union-find over linked keys: key -> the smallest key of its connected component."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for first, second in links:
        low, high = sorted((root(first), root(second)))
        parent[high] = low
    return {key: root(key) for key in parent}


def load_sharegpt(data_dir: Path, *, path: Path | None = None) -> list[LengthExample]:
    """ShareGPT first turns with a non-empty prompt and answer, in file order.

    Groups join the chunks of one conversation and every record with the same prompt text (the
    same conversation is often shared more than once, with near-identical answers): otherwise a
    copy in training would answer its twin in the held-out split.
    """
    kept = []
    for record in _read_jsonl_gz(path or data_dir / SHAREGPT_FILE):
        if int(record["prompt_llama2_tokens"]) >= 1 and int(record["response_llama2_tokens"]) >= 1:
            conversation = "conversation:" + str(record["id"]).rsplit("_", 1)[0]  # "QWJhYvA_0" -> "QWJhYvA"
            kept.append((record, conversation, prompt_key(record["prompt"])))
    groups = _connected_groups([(conversation, prompt) for _, conversation, prompt in kept])
    return [
        LengthExample(
            prompt_text=record["prompt"],
            num_prompt_tokens=int(record["prompt_llama2_tokens"]),
            num_output_tokens=int(record["response_llama2_tokens"]),
            source=SOURCE_SHAREGPT,
            group_id=f"{SOURCE_SHAREGPT}:{groups[conversation]}",
            is_conversation_start=bool(record.get("is_conversation_start", True)),
        )
        for record, conversation, _ in kept
    ]


def load_alpaca_eval(data_dir: Path, generators: Sequence[str], *, path: Path | None = None) -> list[LengthExample]:
    """AlpacaEval answers of the named generators; ValueError naming the valid ones if unknown."""
    wanted = set(generators)
    examples, seen_generators = [], set()
    for record in _read_jsonl_gz(path or data_dir / ALPACA_EVAL_FILE):
        generator = record["generator"]
        seen_generators.add(generator)
        num_output_tokens = int(record["output_llama2_tokens"])
        num_prompt_tokens = int(record["instruction_llama2_tokens"])
        if generator not in wanted or num_output_tokens < 1 or num_prompt_tokens < 1:
            continue
        examples.append(
            LengthExample(
                prompt_text=record["instruction"],
                num_prompt_tokens=num_prompt_tokens,
                num_output_tokens=num_output_tokens,
                source=ALPACA_EVAL_SOURCE_PREFIX + generator,
                group_id=f"alpaca_eval:{record['instruction_idx']}",
            )
        )
    unknown = sorted(wanted - seen_generators)
    if unknown:
        raise ValueError(f"unknown AlpacaEval generator(s) {unknown}; available: {sorted(seen_generators)}")
    return examples


def load_all_generator_lengths(data_dir: Path) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """(generators, instruction text -> output tokens per generator, NaN where it has none).

    The lengths-only file has no texts: its rows join the instruction texts of ALPACA_EVAL_FILE by
    instruction_idx (instructions missing there are skipped).
    """
    import csv

    records = _read_jsonl_gz(data_dir / ALPACA_EVAL_FILE)
    texts = {int(record["instruction_idx"]): record["instruction"] for record in records}
    path = data_dir / ALL_GENERATOR_LENGTHS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        rows = [
            (row["generator"], int(row["instruction_idx"]), int(row["output_llama2_tokens"]))
            for row in csv.DictReader(stream)
        ]
    generators = tuple(sorted({generator for generator, _, _ in rows}))
    column = {name: index for index, name in enumerate(generators)}
    lengths: dict[str, np.ndarray] = {}
    for generator, index, tokens in rows:
        if index in texts and tokens >= 1:
            lengths.setdefault(texts[index], np.full(len(generators), np.nan))[column[generator]] = tokens
    return generators, lengths


def _source_rank(source: str) -> int:
    """Which source's group a shared prompt text takes: ShareGPT, then AlpacaEval, then the rest."""
    if source == SOURCE_SHAREGPT:
        return 0
    return 1 if source.startswith(ALPACA_EVAL_SOURCE_PREFIX) else 2


def canonical_groups(examples: Sequence[LengthExample], reference: Sequence[LengthExample] = ()) -> list[LengthExample]:
    """The examples with one group per normalized prompt text across sources (order kept).

    Feedback prompts are ShareGPT and AlpacaEval prompts answered by the served model: grouped by
    source alone, the same text could be trained on as feedback and held out as ShareGPT. A prompt
    text takes the group of the highest-ranked source holding it (`_source_rank`, first in order
    within a source), so the ShareGPT split never depends on which other files are loaded, and an
    AlpacaEval instruction moves (all its generators together) only when ShareGPT has its text.
    `reference` examples (e.g. the training files, when evaluating a feedback file) only lend their
    groups. Other examples of a group that moved follow it (a conversation's chunks, an instruction's
    generators).
    """
    owner: dict[str, tuple[int, int, str]] = {}  # prompt key -> (source rank, order, group) of its owner
    for order, example in enumerate([*reference, *examples]):
        candidate = (_source_rank(example.source), order, example.group_id)
        key = prompt_key(example.prompt_text)
        if key not in owner or candidate < owner[key]:
            owner[key] = candidate
    links = [(e.group_id, owner[prompt_key(e.prompt_text)][2]) for e in examples]
    component = _connected_groups(links)
    best: dict[str, tuple[int, int, str]] = {}  # component -> its best-ranked owner
    for example in examples:
        candidate = owner[prompt_key(example.prompt_text)]
        root = component[example.group_id]
        if root not in best or candidate < best[root]:
            best[root] = candidate
    target = {group: best[root][2] for group, root in component.items() if root in best}
    return [
        e if target[e.group_id] == e.group_id else dataclasses.replace(e, group_id=target[e.group_id]) for e in examples
    ]


def is_heldout(group_id: str, *, heldout_fraction: float, seed: int) -> bool:
    """Whether a group is held out: a hash of (seed, group id), so the split of one group never
    depends on which other examples are loaded (a file evaluated later splits the same way)."""
    digest = hashlib.sha256(f"{seed}:{group_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < heldout_fraction


def group_fold(group_id: str, *, num_folds: int, seed: int) -> int:
    """A fold in [0, num_folds) from a hash of (seed, group id), like `is_heldout`."""
    digest = hashlib.sha256(f"fold:{seed}:{group_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_folds


def split_by_group(
    examples: Sequence[LengthExample], *, heldout_fraction: float, seed: int
) -> tuple[list[LengthExample], list[LengthExample]]:
    """(train, held-out): whole groups go to one side, chosen by `is_heldout`; order is kept."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    train, heldout = [], []
    for example in examples:
        side = heldout if is_heldout(example.group_id, heldout_fraction=heldout_fraction, seed=seed) else train
        side.append(example)
    return train, heldout


def subsample(examples: Sequence[LengthExample], *, max_examples: int, seed: int) -> list[LengthExample]:
    """At most max_examples examples, chosen at random (seeded), kept in their original order."""
    if max_examples <= 0 or len(examples) <= max_examples:
        return list(examples)
    chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=max_examples, replace=False))
    return [examples[index] for index in chosen]


def load_plain_jsonl(path: Path) -> list[LengthExample]:
    """`{"prompt": ..., "output_tokens": N[, "prompt_tokens": N, "id": ...]}` lines (a user's logs).

    A missing prompt_tokens is 0 (estimated from the characters, features.py); the group is the id,
    else the prompt text, so repeated prompts stay on one side of a split.
    """
    examples = []
    for number, record in enumerate(_read_jsonl_gz(path), start=1):
        if "prompt" not in record or "output_tokens" not in record:
            raise ValueError(f"{path} line {number}: needs 'prompt' and 'output_tokens' fields")
        num_output_tokens = int(record["output_tokens"])
        if num_output_tokens < 1:
            continue
        prompt = str(record["prompt"])
        group = str(record.get("id") or hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16])
        examples.append(
            LengthExample(
                prompt_text=prompt,
                num_prompt_tokens=int(record.get("prompt_tokens", 0)),
                num_output_tokens=num_output_tokens,
                source=JSONL_SOURCE_PREFIX + path.name,
                group_id=f"jsonl:{group}",
            )
        )
    return examples


def detect_format(path: Path) -> DataFormat:
    """The layout of a data file, from the fields of its first record."""
    first = next(_read_jsonl_gz(path), None)
    if first is None:
        raise ValueError(f"{path} holds no records")
    if "response_llama2_tokens" in first and "prompt" in first:
        return DataFormat.SHAREGPT
    if "generator" in first and "output_llama2_tokens" in first:
        return DataFormat.ALPACA_EVAL
    if "prompt" in first and "output_tokens" in first:
        return DataFormat.PLAIN
    if "num_output_tokens" in first and "served_model" in first:
        return DataFormat.FEEDBACK
    raise ValueError(
        f"{path}: unknown record layout (fields {sorted(first)}); plain files need prompt and output_tokens"
    )


def load_file(path: Path, generators: Sequence[str] = ALPACA_EVAL_GENERATORS) -> list[LengthExample]:
    """Examples of any supported data file (AlpacaEval: the named generators' answers)."""
    data_format = detect_format(path)
    if data_format is DataFormat.SHAREGPT:
        return load_sharegpt(path.parent, path=path)
    if data_format is DataFormat.ALPACA_EVAL:
        return load_alpaca_eval(path.parent, generators, path=path)
    if data_format is DataFormat.FEEDBACK:  # every record: a LENGTH-capped one counts with what it generated
        from services.predictor.feedback_train import load_feedback_file

        return load_feedback_file(path, include_censored=True)
    return load_plain_jsonl(path)
