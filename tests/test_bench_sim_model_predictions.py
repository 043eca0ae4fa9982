"""The simulator's shipped-predictor mode: held-out prompts only, resampled with their predictions."""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib

import pytest

from services.bench.sim import cli_inputs
from services.bench.sim.model_predictions import (
    HeldoutRow,
    HeldoutSet,
    heldout_examples,
    heldout_workload,
)
from services.predictor.feedback_store import FeedbackRecord


def _set(rows: list[HeldoutRow]) -> HeldoutSet:
    return HeldoutSet(tuple(rows), "test", 0.0, pathlib.Path("unused"))


def test_workload_resamples_rows_with_their_own_predictions() -> None:
    rows = [
        HeldoutRow(10 + i, 100 * (i + 1), 90.0 * (i + 1), ((0.1, 10.0 * (i + 1)), (0.9, 200.0 * (i + 1))))
        for i in range(3)
    ]
    trace, predictions = heldout_workload(_set(rows), num_requests=500, seed=7, max_model_len=4096)
    assert len(trace) == len(predictions) == 500
    assert len({request.request_id for request in trace}) == 500
    by_prompt = {row.num_prompt_tokens: row for row in rows}
    for request, prediction in zip(trace, predictions, strict=True):
        row = by_prompt[request.num_prompt_tokens]
        assert request.num_output_tokens == row.num_output_tokens
        assert prediction.mean_tokens == pytest.approx(row.mean_tokens)
    assert {request.num_prompt_tokens for request in trace} == set(by_prompt)  # every row drawn at 500 draws
    again, _ = heldout_workload(_set(rows), num_requests=500, seed=7, max_model_len=4096)
    assert again == trace


def test_workload_leaves_out_rows_longer_than_the_model_and_refuses_none_fitting() -> None:
    rows = [HeldoutRow(100, 400, 300.0, ()), HeldoutRow(10, 20, 30.0, ())]
    trace, _ = heldout_workload(_set(rows), num_requests=50, seed=0, max_model_len=64)
    assert {request.num_output_tokens for request in trace} == {20}
    with pytest.raises(ValueError, match="max_model_len"):
        heldout_workload(_set(rows), num_requests=5, seed=0, max_model_len=16)


def test_shipped_predictor_mode_needs_the_heldout_trace() -> None:
    args = argparse.Namespace(trace="sharegpt", prediction="shipped-predictor", seed=0)
    with pytest.raises(ValueError, match="smollm2-heldout"):
        cli_inputs.workload(args, 0)


def test_heldout_prompts_carry_no_text_the_model_trained_on(tmp_path: pathlib.Path) -> None:
    """On synthetic files: smollm2-heldout is made of the shipped model's feedback rows, which the repository
    restores only for a model trained on feedback it has lengths files for (not the default trained on the
    lost feedback-20261206{a,b}.jsonl), so the check must not depend on which model is shipped.
    Half the feedback texts are ShareGPT prompts (a ShareGPT row on the training side trains that text)."""
    from services.predictor import data

    sharegpt = tmp_path / data.SHAREGPT_FILE
    sharegpt.parent.mkdir()
    with gzip.open(sharegpt, "wt", encoding="utf-8") as stream:
        for i in range(200):
            record = {"id": f"c{i}_0", "prompt": f"ShareGPT question {i}", "prompt_llama2_tokens": 9}
            stream.write(json.dumps({**record, "response_llama2_tokens": 20 + i}) + "\n")
    texts = [f"ShareGPT question {i}" for i in range(100)] + [f"my own question {i}" for i in range(100)]
    feedback = tmp_path / "feedback.jsonl"
    records = [
        FeedbackRecord(f"r{i}", text, 9, 30, "smollm2", False, 512, None, None, None, "", 0.0)
        for i, text in enumerate(texts)
    ]
    feedback.write_text("".join(record.to_json() + "\n" for record in records))
    metadata = {"seed": 0, "training": {"heldout_fraction": 0.5}, "data_files_sha256": {data.SHAREGPT_FILE: "-"}}
    examples = heldout_examples([feedback], tmp_path, metadata)
    held = {data.prompt_key(e.prompt_text) for e in examples}
    assert 0 < len(examples) < len(texts) and any(e.prompt_text.startswith("ShareGPT") for e in examples)
    everything = data.load_file(sharegpt) + data.load_file(feedback)
    train, _ = data.split_by_group(everything, heldout_fraction=0.5, seed=0)  # per-source groups
    assert not held & {data.prompt_key(e.prompt_text) for e in train}
