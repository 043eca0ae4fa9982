"""The prompt list `alise collect-lengths` sent, rebuilt later from its list flags.

Two tools need that list again after the answers are in: `alise predictor feedback-lengths` (each
prompt's id and text, to take the texts out of a feedback file and put them back) and the simulator's
held-out traces without feedback files (only the texts, `--feedback-texts collect-list`). Both get it
here, built by collect-lengths' own `load_prompts` (same sampling, deduplication and ids), never a
copy of it, so a list rebuilt later is the list that was sent.

The flags live in `PromptListSettings` next to the lengths-file header that records them
(services/predictor/feedback_lengths.py), not in this module: the predictor package may import only
itself and services.common (tests/test_import_boundaries.py), while this function needs services.cli.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from services.predictor.feedback_lengths import PromptListSettings


def load_prompt_list(settings: PromptListSettings, data_dir: pathlib.Path | None) -> dict[str, str]:
    """prompt id -> text of the collect-lengths list for these settings, in the list's order.

    The ids are unique (workload.load_trace's request ids are unique within a trace and start with its
    name), so the values are the list's texts in its order, none left out.
    """
    from services.cli.collect_lengths import load_prompts  # grpc and the contracts: only when a list is built

    flags = argparse.Namespace(data_dir=data_dir, **dataclasses.asdict(settings))
    return {prompt.prompt_id: prompt.text for prompt in load_prompts(flags)}
