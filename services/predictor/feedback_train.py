"""Recorded feedback as training examples: the served model's own output lengths.

Lengths differ several-fold between models for the same prompt, so a model retrained with
`alise predictor train --from-feedback DIR` gets one generator column per served model
("served:<name>"), maps that served model's requests to it, and makes it the default generator.
Censored records (finished by LENGTH: true length >= generated) are left out unless
include_censored, which counts the cap as the length: right when the workload sets max_tokens to
the length it wants (trace replay with ignore_eos), biased low otherwise.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

from services.predictor.data import LengthExample, file_sha256, prompt_key
from services.predictor.feedback_store import (
    FILE_PREFIX,
    FILE_SUFFIX,
    FeedbackRecord,
    read_feedback,
    read_feedback_file,
)

SERVED_SOURCE_PREFIX = "served:"
MIN_FEEDBACK_EXAMPLES = 50  # fewer usable records than this cannot train anything meaningful


@dataclass(frozen=True)
class FeedbackExamples:
    """What a feedback directory contributes to training."""

    examples: list[LengthExample]  # one per usable record, source "served:<model>"
    file_hashes: dict[str, str]  # "feedback/<file name>" -> sha256, for metadata.json
    served_model_generators: dict[str, str]  # served model name -> its generator column
    most_common_generator: str  # the generator with the most examples (the default to serve)


def served_generator(served_model: str) -> str:
    return SERVED_SOURCE_PREFIX + (served_model or "default")


def feedback_example(record: FeedbackRecord) -> LengthExample:
    """A record as a training or evaluation example; grouped by normalized prompt text, so the same
    prompt asked twice ("hi", "continue") never lands on both sides of a train / held-out split."""
    return LengthExample(
        prompt_text=record.prompt_text,
        num_prompt_tokens=max(record.num_prompt_tokens, 0),
        num_output_tokens=record.num_output_tokens,
        source=served_generator(record.served_model),
        group_id=f"feedback:{prompt_key(record.prompt_text)}",
    )


def _usable(record: FeedbackRecord, include_censored: bool) -> bool:
    return bool(record.prompt_text) and record.num_output_tokens >= 1 and (include_censored or not record.censored)


def load_feedback_file(path: Path, *, include_censored: bool) -> list[LengthExample]:
    """The usable records of one feedback file (evaluation reads a file as data, like a trace)."""
    return [feedback_example(record) for record in read_feedback_file(path) if _usable(record, include_censored)]


def load_feedback_examples(directory: Path, *, include_censored: bool) -> FeedbackExamples:
    """Usable records of a feedback directory; ValueError when fewer than MIN_FEEDBACK_EXAMPLES."""
    examples = [feedback_example(record) for record in read_feedback(directory) if _usable(record, include_censored)]
    if len(examples) < MIN_FEEDBACK_EXAMPLES:
        raise ValueError(
            f"{directory} has {len(examples)} usable feedback records (uncensored, with prompt text); "
            f"at least {MIN_FEEDBACK_EXAMPLES} are needed"
            + ("" if include_censored else " (add --include-censored to use LENGTH-capped ones)")
        )
    files = sorted(directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))
    counts = collections.Counter(example.source for example in examples)
    served_models = {example.source[len(SERVED_SOURCE_PREFIX) :]: example.source for example in examples}
    return FeedbackExamples(
        examples=examples,
        file_hashes={f"feedback/{path.name}": file_sha256(path) for path in files},
        served_model_generators={name if name != "default" else "": source for name, source in served_models.items()},
        most_common_generator=counts.most_common(1)[0][0],
    )
