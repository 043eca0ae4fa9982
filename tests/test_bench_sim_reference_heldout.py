"""The simulator's reference held-out traces (sharegpt-heldout, alpaca-heldout): held-out prompts only, with
the shipped predictor's own predictions for the trace's generator, cached outside the repository and used by
a steady-state run end to end.

The real-data tests find the held-out rows with `--feedback-texts collect-list` (every prompt of
collect-lengths' recorded list counts as trained), so they run wherever ../shared/data is. The default
`files` choice needs the 2026-12-06 feedback files the model trained on (../runs/feedback-all/), which are
lost and cannot be re-made (sampled answers): a test on them could run nowhere. How the two choices relate
(the list's rows are a subset of the files' choice, separate caches) is tested on synthetic files in
test_bench_sim_feedback_texts.py.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from services.bench.sim import cli as sim_cli
from services.bench.sim import cli_inputs
from services.bench.sim.feedback_texts import FeedbackTexts, collect_list_texts
from services.bench.sim.model_predictions import DEFAULT_MODEL_DIR, HeldoutRow, HeldoutSet
from services.bench.sim.reference_heldout import (
    SOURCES,
    UNBOUNDED_MODEL_LEN,
    ReferenceTrace,
    heldout_requests,
    load_reference_heldout,
    reference_heldout_workload,
)
from tests.shared_data import SHARED_DATA_DIR, requires_shared_data

SHAREGPT, ALPACA = ReferenceTrace.SHAREGPT_HELDOUT, ReferenceTrace.ALPACA_HELDOUT
COLLECT_LIST = FeedbackTexts.COLLECT_LIST


def _set(rows: list[HeldoutRow]) -> HeldoutSet:
    return HeldoutSet(tuple(rows), "test", 0.0, pathlib.Path("unused"))


def sharegpt_heldout_workload(heldout: HeldoutSet, **sizes):
    return reference_heldout_workload(SHAREGPT, heldout, **sizes)


def _metadata() -> dict:
    return json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())


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
def test_heldout_prompts_carry_no_text_the_model_trained_on_nor_any_list_text() -> None:
    """Trained = the reference rows' training side (the model's canonical split; feedback rows never move a
    reference row across it) plus every list text (a superset of the lost feedback texts)."""
    from services.predictor import data

    metadata = _metadata()
    requests = heldout_requests(SHAREGPT, SHARED_DATA_DIR, [], metadata, COLLECT_LIST)
    assert len(requests) > 1000
    alpaca = heldout_requests(ALPACA, SHARED_DATA_DIR, [], metadata, COLLECT_LIST)
    listed = {data.prompt_key(text) for text in collect_list_texts(SHARED_DATA_DIR)}
    instructions = SOURCES[ALPACA].rows(SHARED_DATA_DIR, UNBOUNDED_MODEL_LEN)
    off_list = {data.prompt_key(r.prompt_text or "") for r in instructions} - listed
    # Only the few instructions off the list can be held out, and of those fewer than half (both groupings).
    assert 0 < len(alpaca) < len(off_list) / 2
    everything = data.load_file(SHARED_DATA_DIR / data.SHAREGPT_FILE)
    everything += data.load_file(SHARED_DATA_DIR / data.ALPACA_EVAL_FILE)
    seed, fraction = int(metadata["seed"]), float(metadata["training"]["heldout_fraction"])
    train, _ = data.split_by_group(data.canonical_groups(everything), heldout_fraction=fraction, seed=seed)
    trained = {data.prompt_key(e.prompt_text) for e in train} | listed
    assert not {data.prompt_key(r.prompt_text or "") for r in requests} & trained
    assert not {data.prompt_key(r.prompt_text or "") for r in alpaca} & trained
    assert all(r.num_prompt_tokens <= 1024 and min(r.num_prompt_tokens, r.num_output_tokens) >= 4 for r in requests)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> HeldoutSet:
    """sharegpt-heldout's 1,312 rows predicted by the shipped model into a fresh cache, once per module: ~9 s
    on one core with the embedding graph in the predictor's usual cache, ~19 s where it is exported first (the
    module: ~25 s / ~33 s). A fresh cache is what shows predicting and caching agree, and all rows are
    predicted because their tau is the check. Its tests carry requires_shared_data, which skips before setup."""
    return load_reference_heldout(SHAREGPT, feedback_texts=COLLECT_LIST, cache_dir=tmp_path_factory.mktemp("cache"))


@requires_shared_data
def test_cache_round_trips_without_predicting_again(predicted: HeldoutSet, monkeypatch) -> None:
    from services.bench.sim import reference_heldout

    assert predicted.cache_path.is_file() and "prompt_text" not in predicted.cache_path.read_text()
    assert predicted.cache_path.name.startswith(f"{SHAREGPT}-{COLLECT_LIST}-")
    assert not predicted.cache_path.is_relative_to(pathlib.Path(__file__).resolve().parents[1])
    monkeypatch.setattr(reference_heldout, "predict_rows", lambda *_: pytest.fail("predicted again"))
    again = load_reference_heldout(SHAREGPT, feedback_texts=COLLECT_LIST, cache_dir=predicted.cache_path.parents[1])
    assert again.rows == predicted.rows and again.kendall_tau == predicted.kendall_tau
    assert 0.3 < predicted.kendall_tau < 0.6  # the ShareGPT head's held-out ranking, not noise or a leak
    assert all(row.quantiles[0][1] <= row.quantiles[-1][1] for row in predicted.rows)


@requires_shared_data
def test_a_tiny_steady_state_run_end_to_end(predicted: HeldoutSet, monkeypatch, tmp_path, capsys) -> None:
    def load(trace, _model_dir, _files, texts) -> HeldoutSet:
        assert (trace, texts) == (SHAREGPT, COLLECT_LIST)  # the flag reaches the held-out set's choice
        return predicted

    monkeypatch.setattr(cli_inputs, "load_reference_heldout", load)
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    flags = ["--trace", "sharegpt-heldout", "--feedback-texts", "collect-list", "--prediction", "shipped-predictor"]
    flags += ["--num-requests", "300", "--seeds", "0", "--loads", "0.9", "--arrivals", "poisson"]
    flags += ["--policies", "fcfs,alise", "--kv-cache-gb", "4", "--out-dir", str(tmp_path)]
    args = parser.parse_args(["sim", *flags])
    assert args.handler(args) == 0
    assert "sharegpt-heldout 300 requests; predictions shipped-predictor" in capsys.readouterr().out
    report = json.loads((tmp_path / "sim_sharegpt-heldout_llama3-8b-h100-kv4gb_steady.json").read_text())
    assert report["config"]["prediction"] == "shipped-predictor"
    assert {point["policy"] for point in report["result"]["points"]} == {"fcfs", "alise"}


@requires_shared_data
def test_alpaca_rows_are_predicted_for_the_alpaca_writer(tmp_path) -> None:
    """alpaca-heldout asks for text_davinci_003's lengths (the column the trace's answers come from), not
    the model's default ShareGPT column: the cached means are the davinci column's, and they differ.
    collect-list holds out only a handful of instructions (6 with the shipped model), too few for a tau:
    the test checks the column, on every row."""
    from services.bench.sim.reference_heldout import predict_rows
    from services.predictor.embedding import default_cache_dir

    heldout = load_reference_heldout(ALPACA, feedback_texts=COLLECT_LIST, cache_dir=tmp_path)
    assert heldout.cache_path.name.startswith(f"{ALPACA}-{COLLECT_LIST}-")
    requests = heldout_requests(ALPACA, SHARED_DATA_DIR, [], _metadata(), COLLECT_LIST)
    assert [row.num_output_tokens for row in heldout.rows] == [r.num_output_tokens for r in requests] != []
    davinci = predict_rows(DEFAULT_MODEL_DIR, default_cache_dir(), requests, "alpaca_eval:text_davinci_003")
    sharegpt = predict_rows(DEFAULT_MODEL_DIR, default_cache_dir(), requests, "sharegpt")
    assert [row.mean_tokens for row in heldout.rows] == pytest.approx([row.mean_tokens for row in davinci])
    assert max(abs(a.mean_tokens - b.mean_tokens) for a, b in zip(davinci, sharegpt, strict=True)) > 1.0
