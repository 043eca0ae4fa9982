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

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

SHAREGPT_FILE = "sharegpt/sharegpt_v3_first_turn.dev.jsonl.gz"
ALPACA_EVAL_FILE = "alpaca_eval/model_outputs_10_generators.dev.jsonl.gz"
SOURCE_SHAREGPT = "sharegpt"
ALPACA_EVAL_SOURCE_PREFIX = "alpaca_eval:"


@dataclass(frozen=True)
class LengthExample:
    """One prompt with the length of a real answer to it."""

    prompt_text: str  # the user's prompt
    num_prompt_tokens: int  # prompt length in Llama-2 tokens (> 0)
    num_output_tokens: int  # answer length in Llama-2 tokens (> 0): the training target
    source: str  # "sharegpt" or "alpaca_eval:<generator>"
    group_id: str  # examples with the same group_id are never split between train and held-out


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (recorded in metadata.json for every data file used)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_jsonl_gz(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def load_sharegpt(data_dir: Path) -> list[LengthExample]:
    """ShareGPT first turns with a non-empty prompt and answer, in file order."""
    examples = []
    for record in _read_jsonl_gz(data_dir / SHAREGPT_FILE):
        num_prompt_tokens = int(record["prompt_llama2_tokens"])
        num_output_tokens = int(record["response_llama2_tokens"])
        if num_prompt_tokens < 1 or num_output_tokens < 1:
            continue
        conversation_id = str(record["id"]).rsplit("_", 1)[0]  # "QWJhYvA_0" -> "QWJhYvA"
        examples.append(
            LengthExample(
                prompt_text=record["prompt"],
                num_prompt_tokens=num_prompt_tokens,
                num_output_tokens=num_output_tokens,
                source=SOURCE_SHAREGPT,
                group_id=f"{SOURCE_SHAREGPT}:{conversation_id}",
            )
        )
    return examples


def load_alpaca_eval(data_dir: Path, generators: Sequence[str]) -> list[LengthExample]:
    """AlpacaEval answers of the named generators; ValueError naming the valid ones if unknown."""
    wanted = set(generators)
    examples, seen_generators = [], set()
    for record in _read_jsonl_gz(data_dir / ALPACA_EVAL_FILE):
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


def split_by_group(
    examples: Sequence[LengthExample], *, heldout_fraction: float, seed: int
) -> tuple[list[LengthExample], list[LengthExample]]:
    """(train, held-out): whole groups go to one side; deterministic for a given seed and input."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    group_ids = sorted({example.group_id for example in examples})
    order = np.random.default_rng(seed).permutation(len(group_ids))
    num_heldout_groups = max(1, round(heldout_fraction * len(group_ids)))
    heldout_groups = {group_ids[index] for index in order[:num_heldout_groups]}
    train = [example for example in examples if example.group_id not in heldout_groups]
    heldout = [example for example in examples if example.group_id in heldout_groups]
    return train, heldout


def subsample(examples: Sequence[LengthExample], *, max_examples: int, seed: int) -> list[LengthExample]:
    """At most max_examples examples, chosen at random (seeded), kept in their original order."""
    if max_examples <= 0 or len(examples) <= max_examples:
        return list(examples)
    chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=max_examples, replace=False))
    return [examples[index] for index in chosen]
