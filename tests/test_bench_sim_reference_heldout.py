"""The simulator's reference held-out traces (sharegpt-heldout, alpaca-heldout): held-out prompts only, with
the shipped predictor's own predictions for the trace's generator, cached outside the repository and used by
a steady-state run end to end."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from services.bench.sim import cli as sim_cli
from services.bench.sim import cli_inputs
from services.bench.sim.model_predictions import DEFAULT_FEEDBACK_FILES, DEFAULT_MODEL_DIR, HeldoutRow, HeldoutSet
from services.bench.sim.reference_heldout import (
    ReferenceTrace,
    heldout_requests,
    load_reference_heldout,
    reference_heldout_workload,
)
from tests.shared_data import SHARED_DATA_DIR, requires_shared_data

needs_feedback = pytest.mark.skipif(
    not all(path.is_file() for path in DEFAULT_FEEDBACK_FILES), reason="no collect-lengths feedback files"
)


SHAREGPT, ALPACA = ReferenceTrace.SHAREGPT_HELDOUT, ReferenceTrace.ALPACA_HELDOUT


def _set(rows: list[HeldoutRow]) -> HeldoutSet:
    return HeldoutSet(tuple(rows), "test", 0.0, pathlib.Path("unused"))


def sharegpt_heldout_workload(heldout: HeldoutSet, **sizes):
    return reference_heldout_workload(SHAREGPT, heldout, **sizes)


def test_workload_permutes_while_rows_suffice_and_resamples_beyond() -> None:
    rows = [HeldoutRow(10 + i, 20 + i, 25.0 + i, ((0.5, 20.0 + i),)) for i in range(50)]
    trace, predictions = sharegpt_heldout_workload(_set(rows), num_requests=50, seed=3, max_model_len=4096)
    assert sorted(t.num_prompt_tokens for t in trace) == [row.num_prompt_tokens for row in rows]  # each once
    for request, prediction in zip(trace, predictions, strict=True):
        assert prediction.mean_tokens == pytest.approx(request.num_prompt_tokens + 15.0)  # its own row's
    longer, _ = sharegpt_heldout_workload(_set(rows), num_requests=400, seed=3, max_model_len=4096)
    assert len(longer) == 400 and len({t.request_id for t in longer}) == 400
    assert len({t.num_prompt_tokens for t in longer}) == 50
    short, _ = sharegpt_heldout_workload(_set(rows), num_requests=10, seed=3, max_model_len=40)
    assert all(t.num_prompt_tokens + t.num_output_tokens <= 40 for t in short)
    with pytest.raises(ValueError, match="max_model_len"):
        sharegpt_heldout_workload(_set(rows), num_requests=10, seed=3, max_model_len=8)


@requires_shared_data
@needs_feedback
def test_heldout_sharegpt_prompts_carry_no_text_the_model_trained_on() -> None:
    from services.predictor import data

    metadata = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())
    requests = heldout_requests(SHAREGPT, SHARED_DATA_DIR, DEFAULT_FEEDBACK_FILES, metadata)
    assert len(requests) > 1000
    alpaca = heldout_requests(ALPACA, SHARED_DATA_DIR, DEFAULT_FEEDBACK_FILES, metadata)
    assert 30 < len(alpaca) < 130  # held out under both groupings: fewer than a fifth of the 662 instructions
    everything = data.load_file(SHARED_DATA_DIR / data.SHAREGPT_FILE)
    everything += data.load_file(SHARED_DATA_DIR / data.ALPACA_EVAL_FILE)
    everything += [e for path in DEFAULT_FEEDBACK_FILES for e in data.load_file(path)]
    train, _ = data.split_by_group(data.canonical_groups(everything), heldout_fraction=0.2, seed=int(metadata["seed"]))
    trained = {data.prompt_key(e.prompt_text) for e in train}
    assert not {data.prompt_key(r.prompt_text or "") for r in requests} & trained
    assert not {data.prompt_key(r.prompt_text or "") for r in alpaca} & trained
    assert all(r.num_prompt_tokens <= 1024 and min(r.num_prompt_tokens, r.num_output_tokens) >= 4 for r in requests)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> HeldoutSet:
    """The held-out set predicted by the shipped model into a fresh cache (~10 s on one core; the
    embedding graph from the predictor's usual cache)."""
    if not SHARED_DATA_DIR.is_dir() or not all(path.is_file() for path in DEFAULT_FEEDBACK_FILES):
        pytest.skip(f"needs {SHARED_DATA_DIR} and the collect-lengths feedback files")
    return load_reference_heldout(SHAREGPT, cache_dir=tmp_path_factory.mktemp("cache"))


def test_cache_round_trips_without_predicting_again(predicted: HeldoutSet, monkeypatch) -> None:
    from services.bench.sim import reference_heldout

    assert predicted.cache_path.is_file() and "prompt_text" not in predicted.cache_path.read_text()
    assert not predicted.cache_path.is_relative_to(pathlib.Path(__file__).resolve().parents[1])
    monkeypatch.setattr(reference_heldout, "predict_rows", lambda *_: pytest.fail("predicted again"))
    again = load_reference_heldout(SHAREGPT, cache_dir=predicted.cache_path.parents[1])
    assert again.rows == predicted.rows and again.kendall_tau == predicted.kendall_tau
    assert 0.3 < predicted.kendall_tau < 0.6  # the ShareGPT head's held-out ranking, not noise or a leak
    assert all(row.quantiles[0][1] <= row.quantiles[-1][1] for row in predicted.rows)


def test_a_tiny_steady_state_run_end_to_end(predicted: HeldoutSet, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(cli_inputs, "load_reference_heldout", lambda *_: predicted)
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    flags = ["--trace", "sharegpt-heldout", "--prediction", "shipped-predictor", "--num-requests", "300"]
    flags += ["--seeds", "0", "--loads", "0.9", "--arrivals", "poisson", "--policies", "fcfs,alise"]
    args = parser.parse_args(["sim", *flags, "--kv-cache-gb", "4", "--out-dir", str(tmp_path)])
    assert args.handler(args) == 0
    assert "sharegpt-heldout 300 requests; predictions shipped-predictor" in capsys.readouterr().out
    report = json.loads((tmp_path / "sim_sharegpt-heldout_llama3-8b-h100-kv4gb_steady.json").read_text())
    assert report["config"]["prediction"] == "shipped-predictor"
    assert {point["policy"] for point in report["result"]["points"]} == {"fcfs", "alise"}


def test_alpaca_rows_are_predicted_for_the_alpaca_writer(tmp_path) -> None:
    """alpaca-heldout asks for text_davinci_003's lengths (the column the trace's answers come from), not
    the model's default ShareGPT column: the cached means are the davinci column's, and they differ."""
    if not SHARED_DATA_DIR.is_dir() or not all(path.is_file() for path in DEFAULT_FEEDBACK_FILES):
        pytest.skip(f"needs {SHARED_DATA_DIR} and the collect-lengths feedback files")
    from services.bench.sim.reference_heldout import SOURCES, predict_rows
    from services.predictor.embedding import default_cache_dir

    heldout = load_reference_heldout(ALPACA, cache_dir=tmp_path)
    assert heldout.cache_path.name.startswith("alpaca-heldout-") and len(heldout.rows) > 30
    assert 0.3 < heldout.kendall_tau < 0.8
    metadata = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())
    requests = heldout_requests(ALPACA, SHARED_DATA_DIR, DEFAULT_FEEDBACK_FILES, metadata)[:8]
    davinci = predict_rows(DEFAULT_MODEL_DIR, default_cache_dir(), requests, SOURCES[ALPACA].generator)
    sharegpt = predict_rows(DEFAULT_MODEL_DIR, default_cache_dir(), requests, "sharegpt")
    assert [row.mean_tokens for row in heldout.rows[:8]] == pytest.approx([row.mean_tokens for row in davinci])
    assert max(abs(a.mean_tokens - b.mean_tokens) for a, b in zip(davinci, sharegpt, strict=True)) > 1.0
