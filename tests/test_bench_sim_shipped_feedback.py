"""The simulator finds a model's feedback files by itself: restored from the repository's lengths files
into the cache, reused while their sha256 is the metadata's, refused with a clear error otherwise.

A synthetic model dir names real feedback files (metadata.json only): the restores read the committed
docs/benchmarks/smollm2/lengths files and ../shared/data, and skip without the data. The refusals that
need no restore run anywhere.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from services.bench.sim import cli as sim_cli
from services.bench.sim import cli_inputs, shipped_feedback
from services.bench.sim.model_predictions import HeldoutSet
from services.bench.sim.shipped_feedback import CACHE_SUBDIR, shipped_feedback_files
from services.predictor.feedback_lengths import sha256_hex
from tests.shared_data import SHARED_DATA_DIR, requires_shared_data

# The sha256 of each committed lengths file's original (its header's feedback_sha256).
SHA_20261207 = "3a81ffbb4df52882b680dbb45927ae2550b04a3b831ef862affa9e8f43733e09"
SHA_20261207B = "afb4cd70151234a15bf51d0d352ce2276ee1358db7346478182c5c5853c6f8e3"
SHAREGPT_KEY = "sharegpt/sharegpt_v3_first_turn.dev.jsonl.gz"  # a dataset key: never a feedback file


def _model(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """A model dir whose metadata.json lists a dataset file and then `files` (name -> sha256) as feedback."""
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    trained = {SHAREGPT_KEY: "0" * 64, **{f"feedback/{name}": sha for name, sha in files.items()}}
    (model_dir / "metadata.json").write_text(json.dumps({"model_version": "test", "data_files_sha256": trained}))
    return model_dir


def _restore_must_not_run(*_args, **_kwargs):
    pytest.fail("restored although the cache holds the file")


@requires_shared_data
def test_restores_in_metadata_order_then_reuses_the_cache(tmp_path, monkeypatch) -> None:
    model_dir = _model(tmp_path, {"feedback-20261207b.jsonl": SHA_20261207B, "feedback-20261207.jsonl": SHA_20261207})
    cache_root = tmp_path / "cache"
    files = shipped_feedback_files(model_dir, data_dir=SHARED_DATA_DIR, cache_dir=cache_root)
    folder = cache_root / CACHE_SUBDIR
    assert files == [folder / "feedback-20261207b.jsonl", folder / "feedback-20261207.jsonl"]
    assert [sha256_hex(path.read_bytes()) for path in files] == [SHA_20261207B, SHA_20261207]
    assert sorted(path.name for path in folder.iterdir()) == sorted(path.name for path in files)  # no partial left
    monkeypatch.setattr(shipped_feedback, "restore_each", _restore_must_not_run)
    assert shipped_feedback_files(model_dir, data_dir=SHARED_DATA_DIR, cache_dir=cache_root) == files


@requires_shared_data
def test_a_corrupted_cached_copy_is_replaced(tmp_path) -> None:
    model_dir = _model(tmp_path, {"feedback-20261207.jsonl": SHA_20261207})
    cached = tmp_path / "cache" / CACHE_SUBDIR / "feedback-20261207.jsonl"
    cached.parent.mkdir(parents=True)
    cached.write_text('{"torn": ')
    assert shipped_feedback_files(model_dir, data_dir=SHARED_DATA_DIR, cache_dir=tmp_path / "cache") == [cached]
    assert sha256_hex(cached.read_bytes()) == SHA_20261207


@requires_shared_data
def test_a_restore_that_is_not_the_trained_file_is_refused(tmp_path) -> None:
    """The lengths file restores its own original, but the model trained on other bytes of that name."""
    model_dir = _model(tmp_path, {"feedback-20261207.jsonl": "f" * 64})
    with pytest.raises(ValueError, match=f"not the {'f' * 64} .* trained on as feedback-20261207.jsonl"):
        shipped_feedback_files(model_dir, data_dir=SHARED_DATA_DIR, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("*.jsonl"))


def test_a_file_the_repository_cannot_restore_is_named(tmp_path, monkeypatch) -> None:
    """The lost 2026-12-06 files have no lengths file: refused before any data is read or anything cached."""
    model_dir = _model(
        tmp_path, {"feedback-20261206a.jsonl": "a" * 64, "feedback-20261207.jsonl": SHA_20261207, "x.jsonl": "b" * 64}
    )
    monkeypatch.setattr(shipped_feedback, "restore_each", _restore_must_not_run)
    expected = (
        "feedback files are not restorable from the repository: feedback-20261206a.jsonl, x.jsonl have no "
        "lengths file in docs/benchmarks/smollm2/lengths"
    )
    with pytest.raises(FileNotFoundError) as error:
        shipped_feedback_files(model_dir, data_dir=tmp_path / "no-data", cache_dir=tmp_path / "cache")
    assert str(error.value) == f"{model_dir}: {expected}"
    assert not (tmp_path / "cache").exists()


def test_a_model_without_feedback_has_no_files(tmp_path) -> None:
    assert shipped_feedback_files(_model(tmp_path, {}), cache_dir=tmp_path / "cache") == []


def _sim_args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["sim", "--prediction", "shipped-predictor", *flags])


def test_the_held_out_traces_read_the_shipped_files_without_the_flag(tmp_path, monkeypatch) -> None:
    """--feedback-texts files without --feedback-file: the shipped model's files, restored; collect-list: none."""
    restored = [tmp_path / "feedback-20261207.jsonl"]
    seen = []
    monkeypatch.setattr(cli_inputs, "shipped_feedback_files", lambda model_dir: restored)

    def load(trace, model_dir, files, texts) -> HeldoutSet:
        seen.append((model_dir, files, texts))
        raise ValueError("stop here")

    monkeypatch.setattr(cli_inputs, "load_reference_heldout", load)
    for texts in ("files", "collect-list"):
        args = _sim_args("--trace", "sharegpt-heldout", "--feedback-texts", texts, "--num-requests", "10")
        with pytest.raises(ValueError, match="stop here"):
            cli_inputs.workload(args, 0)
    assert seen == [
        (cli_inputs.DEFAULT_MODEL_DIR, restored, "files"),
        (cli_inputs.DEFAULT_MODEL_DIR, [], "collect-list"),
    ]


@pytest.mark.parametrize("trace", ["smollm2-heldout", "alpaca-heldout"])
def test_a_shipped_model_the_repository_cannot_restore_is_one_error_line(tmp_path, capsys, monkeypatch, trace) -> None:
    """Exit 2, before any dataset is read: which files the repository lacks, and what runs instead."""
    model_dir = _model(tmp_path, {"feedback-20261206a.jsonl": "a" * 64, "feedback-20261207.jsonl": SHA_20261207})
    monkeypatch.setattr(cli_inputs, "DEFAULT_MODEL_DIR", model_dir)
    args = _sim_args("--trace", trace, "--feedback-texts", "files", "--num-requests", "10", "--out-dir", str(tmp_path))
    assert args.handler(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith(f"alise bench sim: error: {model_dir}: feedback files are not restorable from the ")
    assert "feedback-20261206a.jsonl has no lengths file in docs/benchmarks/smollm2/lengths; " in error
    advice = "cannot be rebuilt without them" if trace == "smollm2-heldout" else "use --feedback-texts collect-list"
    assert advice in error
