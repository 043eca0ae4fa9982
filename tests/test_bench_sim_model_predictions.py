"""The simulator's shipped-predictor mode: held-out prompts only, resampled with their predictions."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from services.bench.sim import cli_inputs
from services.bench.sim.model_predictions import (
    DEFAULT_FEEDBACK_FILES,
    DEFAULT_MODEL_DIR,
    HeldoutRow,
    HeldoutSet,
    heldout_examples,
    heldout_workload,
)
from tests.shared_data import SHARED_DATA_DIR, requires_shared_data


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


@requires_shared_data
@pytest.mark.skipif(not all(p.is_file() for p in DEFAULT_FEEDBACK_FILES), reason="no collect-lengths feedback files")
def test_heldout_prompts_carry_no_text_the_model_trained_on() -> None:
    from services.predictor import data

    metadata = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())
    examples = heldout_examples(DEFAULT_FEEDBACK_FILES, SHARED_DATA_DIR, metadata)
    assert examples
    everything = data.load_file(SHARED_DATA_DIR / data.SHAREGPT_FILE)
    everything += data.load_file(SHARED_DATA_DIR / data.ALPACA_EVAL_FILE)
    everything += [e for path in DEFAULT_FEEDBACK_FILES for e in data.load_file(path)]
    train, _ = data.split_by_group(everything, heldout_fraction=0.2, seed=int(metadata["seed"]))
    trained = {data.prompt_key(e.prompt_text) for e in train}
    assert not {data.prompt_key(e.prompt_text) for e in examples} & trained
