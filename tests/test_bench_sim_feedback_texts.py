"""The held-out traces without the feedback files (`--feedback-texts collect-list`, the default): every prompt of
`alise collect-lengths`' list counts as trained, so a list text is never held out, the held-out rows are
a subset of those the feedback files leave, and the two choices never share a prediction cache.

On tiny synthetic data files laid out as ../shared/data (3,000 ShareGPT prompts, 800 AlpacaEval
instructions: more than the recorded list draws, so rows stay off it) and a synthetic model metadata.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib

import pytest

from services.bench.sim import cli as sim_cli
from services.bench.sim import cli_inputs, reference_heldout
from services.bench.sim.feedback_texts import FeedbackTexts, collect_list_texts
from services.bench.sim.model_predictions import HeldoutRow, trained_prompt_keys, trained_prompt_keys_with_texts
from services.bench.sim.reference_heldout import ReferenceTrace, heldout_requests, load_reference_heldout
from services.predictor import data
from services.predictor.feedback_store import FeedbackRecord

NUM_SHAREGPT, NUM_INSTRUCTIONS = 3000, 800
SHARED_TEXT = "Write a haiku about the sea."  # in both sources: canonical grouping gives it ShareGPT's group


def _write_gz(path: pathlib.Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as stream:
        stream.writelines(json.dumps(record) + "\n" for record in records)


def _sharegpt_record(index: int) -> dict:
    prompt = SHARED_TEXT if index == 0 else f"ShareGPT question {index}: tell me about topic {index % 97}"
    return {"id": f"c{index}_0", "prompt": prompt, "prompt_llama2_tokens": 10 + index % 40}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("data")
    sharegpt = [{**_sharegpt_record(i), "response_llama2_tokens": 20 + i % 300} for i in range(NUM_SHAREGPT)]
    _write_gz(root / data.SHAREGPT_FILE, sharegpt)
    alpaca = [
        {
            "generator": generator,
            "instruction_idx": index,
            "instruction": SHARED_TEXT if index == 0 else f"Instruction {index}: list {index % 13} things",
            "instruction_llama2_tokens": 8 + index % 20,
            "output_llama2_tokens": 30 + (index * (g + 3)) % 400,
        }
        for index in range(NUM_INSTRUCTIONS)
        for g, generator in enumerate(data.ALPACA_EVAL_GENERATORS)
    ]
    _write_gz(root / data.ALPACA_EVAL_FILE, alpaca)
    return root


@pytest.fixture(scope="module")
def feedback_file(root: pathlib.Path) -> pathlib.Path:
    """SmolLM2-like answers to the first 500 texts of the list (a stack stopped before the end, as the real one)."""
    path = root.parent / "feedback" / "feedback-test.jsonl"
    path.parent.mkdir(exist_ok=True)
    records = [
        FeedbackRecord(f"r{i}", text, 12, 50 + i % 400, "smollm2", False, 512, None, None, None, "", 0.0)
        for i, text in enumerate(collect_list_texts(root)[:500])
    ]
    path.write_text("".join(record.to_json() + "\n" for record in records))
    return path


@pytest.fixture(scope="module")
def metadata(root: pathlib.Path, feedback_file: pathlib.Path) -> dict:
    files = {name: data.file_sha256(root / name) for name in (data.SHAREGPT_FILE, data.ALPACA_EVAL_FILE)}
    files[f"feedback/{feedback_file.name}"] = data.file_sha256(feedback_file)
    return {"model_version": "test-model", "seed": 0, "training": {"heldout_fraction": 0.5}, "data_files_sha256": files}


def _keys(requests) -> set[str]:
    return {data.prompt_key(request.prompt_text or "") for request in requests}


@pytest.mark.parametrize("trace", list(ReferenceTrace))
def test_a_text_on_the_list_is_never_held_out(root, feedback_file, metadata, trace) -> None:
    listed = {data.prompt_key(text) for text in collect_list_texts(root)}
    kept = heldout_requests(trace, root, [], metadata, FeedbackTexts.COLLECT_LIST)
    from_files = heldout_requests(trace, root, [feedback_file], metadata, FeedbackTexts.FILES)
    assert kept and not _keys(kept) & listed
    assert _keys(kept) <= _keys(from_files)  # a superset of the feedback texts holds out a subset
    assert _keys(from_files) & listed  # the files alone keep some list texts the model never trained on


def test_the_list_counts_every_feedback_text_as_trained(root, feedback_file, metadata) -> None:
    texts = collect_list_texts(root)
    assert len(texts) == len({data.prompt_key(text) for text in texts}) > 1000  # deduplicated, as collect-lengths
    from_files = trained_prompt_keys([feedback_file], root, metadata)
    assert from_files <= trained_prompt_keys_with_texts(texts, root, metadata)
    assert data.prompt_key(SHARED_TEXT) in trained_prompt_keys_with_texts([SHARED_TEXT], root, metadata)


def test_the_two_choices_never_share_a_cache(root, feedback_file, metadata, tmp_path, monkeypatch) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "metadata.json").write_text(json.dumps(metadata))
    calls = []

    def predict(_model_dir, _cache_root, requests, _generator):
        calls.append(len(requests))
        return [
            HeldoutRow(r.num_prompt_tokens, r.num_output_tokens, 1.0 + i, ((0.5, 1.0),)) for i, r in enumerate(requests)
        ]

    monkeypatch.setattr(reference_heldout, "predict_rows", predict)

    def load(texts: FeedbackTexts, files=(feedback_file,)):
        return load_reference_heldout(
            ReferenceTrace.SHAREGPT_HELDOUT, model_dir, files, texts, data_dir=root, cache_dir=tmp_path
        )

    from_files, from_list = load(FeedbackTexts.FILES), load(FeedbackTexts.COLLECT_LIST)
    assert from_files.cache_path != from_list.cache_path and len(calls) == 2  # the list did not read the files' cache
    assert "collect-list" in from_list.cache_path.name and len(from_list.rows) < len(from_files.rows)
    assert (
        load(FeedbackTexts.FILES).rows == from_files.rows
        and load(FeedbackTexts.COLLECT_LIST, files=()).rows == from_list.rows
    )
    assert len(calls) == 2  # both read back from their own caches; the list reads no feedback file


def _args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["sim", "--prediction", "shipped-predictor", *flags])


def test_the_flag_defaults_to_the_list_and_refuses_a_file_it_would_ignore() -> None:
    """collect-list is the default: it runs for any model, even one whose feedback files are not restorable."""
    assert cli_inputs.feedback_texts(_args("--trace", "sharegpt-heldout")) is FeedbackTexts.COLLECT_LIST
    chosen = _args("--trace", "alpaca-heldout", "--feedback-texts", "files")
    assert cli_inputs.feedback_texts(chosen) is FeedbackTexts.FILES
    for flags in ([], ["--feedback-texts", "collect-list"]):  # smollm2-heldout is the files' rows
        assert cli_inputs.feedback_texts(_args("--trace", "smollm2-heldout", *flags)) is FeedbackTexts.FILES
    with pytest.raises(ValueError, match="--feedback-file needs --feedback-texts files"):
        cli_inputs.feedback_texts(_args("--trace", "sharegpt-heldout", "--feedback-file", "x.jsonl"))


LOST = {"feedback-20261206a.jsonl": "a" * 64, "feedback-20261206b.jsonl": "b" * 64}  # no lengths files
RESTORABLE = {"feedback-20261207.jsonl": "3a81ffbb4df52882b680dbb45927ae2550b04a3b831ef862affa9e8f43733e09"}
NOT_RESTORABLE = (
    "the shipped model's feedback files are not restorable from the repository: feedback-20261206a.jsonl, "
    "feedback-20261206b.jsonl have no lengths file in docs/benchmarks/smollm2/lengths; "
)
RESTORED = (
    "leave out --feedback-file for the shipped model's (feedback-20261207.jsonl, restored from "
    "docs/benchmarks/smollm2/lengths)"
)


@pytest.mark.parametrize(
    ("trace", "texts", "shipped", "advice"),
    [
        (
            "sharegpt-heldout",
            "files",
            LOST,
            f"{NOT_RESTORABLE}use --feedback-texts collect-list (the default) for sharegpt-heldout",
        ),
        (
            "alpaca-heldout",
            "files",
            LOST,
            f"{NOT_RESTORABLE}use --feedback-texts collect-list (the default) for alpaca-heldout",
        ),
        (
            "smollm2-heldout",
            "collect-list",
            LOST,
            f"{NOT_RESTORABLE}smollm2-heldout is those files' rows and cannot be rebuilt",
        ),
        (
            "sharegpt-heldout",
            "files",
            RESTORABLE,
            f"{RESTORED}, or use --feedback-texts collect-list (the default) for",
        ),
        ("smollm2-heldout", "files", RESTORABLE, RESTORED),
    ],
)
def test_a_missing_feedback_file_is_one_error_line(
    tmp_path, capsys, monkeypatch, trace, texts, shipped, advice
) -> None:
    """Exit 2 through the CLI's error path, before any dataset or model file is read: which file, and what
    runs instead: the shipped model's own files where the repository restores them (its metadata names
    them; a synthetic one here, so the test holds whichever model is shipped), else which it lacks."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    trained = {f"feedback/{name}": sha for name, sha in shipped.items()}
    (model_dir / "metadata.json").write_text(json.dumps({"data_files_sha256": trained}))
    monkeypatch.setattr(cli_inputs, "DEFAULT_MODEL_DIR", model_dir)
    missing = tmp_path / "absent" / "feedback.jsonl"
    flags = ["--trace", trace, "--feedback-texts", texts, "--feedback-file", str(missing), "--out-dir", str(tmp_path)]
    for method in ("steady-state", "finite-sweep", "capacity"):
        args = _args(*flags, "--method", method, "--num-requests", "10")
        assert args.handler(args) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "Traceback" not in error
        assert error.startswith(f"alise bench sim: error: feedback file {missing} not found: {advice}")
