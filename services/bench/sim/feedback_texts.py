"""Which prompt texts count as the shipped predictor's feedback when its held-out split is rebuilt.

The shipped default trained on SmolLM2's answers recorded by `alise collect-lengths` (feedback JSONL
files, sha256s in its metadata.json). Its held-out prompts are those no training row carries,
so rebuilding them needs to know which texts were feedback:

    files          the feedback files themselves (sha256-checked against the model): exactly the
                   texts it trained on, as `model_predictions.trained_prompt_keys` splits them
    collect-list   every prompt of the list `alise collect-lengths` sends with the flags recorded in
                   docs/benchmarks/smollm2/README.md (RECORDED_COLLECT_FLAGS). Both stacks answered that
                   one list from its two ends and the gateway records a chat prompt as its message's
                   text, so every feedback text is on it: a superset. Needs no feedback file and no
                   lengths file, and holds out fewer rows: a list text is never held out, trained on
                   or not.

`files` without --feedback-file reads the model's own files, restored byte for byte from their
text-free lengths files in docs/benchmarks/smollm2/lengths and ../shared/data (shipped_feedback.py),
when the repository has one for each; a model trained on a file it has none for (the default trained on
the lost 2026-12-06 files) runs `files` only with --feedback-file, where someone still has them.
`alise bench sim` defaults to collect-list, which runs for any model.

The list is built by collect-lengths' own `load_prompts` (same sampling, same dedup), never a copy
(services/cli/collect_lengths_prompt_list.py, which feedback-lengths restore uses too).
"""

from __future__ import annotations

import pathlib
from enum import StrEnum

from services.bench.workload import ALPACA_EVAL_FILE, SHAREGPT_FILE
from services.cli.collect_lengths_prompt_list import load_prompt_list
from services.predictor.feedback_lengths import PromptListSettings


class FeedbackTexts(StrEnum):
    """How the held-out traces learn which texts the model saw as feedback (`--feedback-texts`)."""

    FILES = "files"
    COLLECT_LIST = "collect-list"


# docs/benchmarks/smollm2/README.md: the list the shipped model's feedback answered (1,644 prompts).
# Its fields are part of the prediction cache's key (reference_heldout._cache_name).
RECORDED_COLLECT_FLAGS = PromptListSettings(num_sharegpt=1150, num_alpaca=620, max_prompt_chars=1500, seed=0)
# The data files the list is drawn from (workload.load_trace's ShareGPT and Alpaca traces).
COLLECT_LIST_DATA_FILES = (SHAREGPT_FILE, ALPACA_EVAL_FILE)


def collect_list_texts(data_dir: pathlib.Path, flags: PromptListSettings = RECORDED_COLLECT_FLAGS) -> list[str]:
    """The prompt texts `alise collect-lengths` sends with `flags`, in its order."""
    return list(load_prompt_list(flags, data_dir).values())
