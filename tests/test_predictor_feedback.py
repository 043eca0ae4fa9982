"""Feedback storage, the live accuracy window, and retraining on the served model's own lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.predictor.feedback_store import FeedbackRecord, FeedbackStore, read_feedback
from services.predictor.live_accuracy import LiveAccuracyWindow


def _record(index: int, *, tokens: int, censored: bool = False, model: str = "tiny") -> FeedbackRecord:
    return FeedbackRecord(
        request_id=f"gw-{index}",
        prompt_text=f"Give me {index % 15 + 1} ideas about topic {index}",
        num_prompt_tokens=9,
        num_output_tokens=tokens,
        served_model=model,
        censored=censored,
        max_tokens=2048,
        predicted_mean_tokens=None,
        predicted_p50_tokens=None,
        predicted_p90_tokens=None,
        prediction_model_version="",
        finished_at_unix_s=1.7e9 + index,
    )


def test_store_appends_and_reads_back_skipping_torn_lines(tmp_path):
    store = FeedbackStore(tmp_path / "fb")
    store.append([_record(0, tokens=10), _record(1, tokens=20, censored=True)])
    store.append([_record(2, tokens=30)])
    (files,) = list((tmp_path / "fb").iterdir())
    with files.open("a", encoding="utf-8") as stream:
        stream.write('{"request_id": "torn", "prompt_te')  # a crash mid-line
    records = list(read_feedback(tmp_path / "fb"))
    assert [r.request_id for r in records] == ["gw-0", "gw-1", "gw-2"] and store.num_stored == 3
    assert records[1].censored and records[0] == _record(0, tokens=10)
    with pytest.raises(FileNotFoundError):
        list(read_feedback(tmp_path / "missing"))


def test_live_window_keeps_the_last_n():
    window = LiveAccuracyWindow(window_size=3)
    assert math.isnan(window.snapshot().kendall_tau) and window.snapshot().num_requests == 0
    for predicted, actual in ((1000.0, 1), (10.0, 10), (20.0, 20), (30.0, 35)):
        window.add(predicted, predicted * 2, actual)
    snapshot = window.snapshot()
    assert snapshot.num_requests == 3  # the first (badly predicted) one fell out
    assert snapshot.kendall_tau == pytest.approx(1.0) and snapshot.mae_tokens == pytest.approx(5 / 3)
    assert snapshot.coverage_p90 == pytest.approx(1.0)
    with pytest.raises(ValueError):
        LiveAccuracyWindow(window_size=1)


def test_train_from_feedback_learns_the_served_model(tmp_path, capsys):
    pytest.importorskip("xgboost")
    pytest.importorskip("onnxmltools")
    from services.predictor import cli
    from services.predictor.artifact import read_metadata
    from services.predictor.embedding import default_cache_dir
    from services.predictor.model import PromptInput
    from services.predictor.reload import LoadSettings, PredictorLoader

    rng = np.random.default_rng(0)
    store = FeedbackStore(tmp_path / "fb")
    records = [_record(i, tokens=int(40 * (i % 15 + 1) * rng.uniform(0.8, 1.2))) for i in range(300)]
    store.append(records + [_record(900 + i, tokens=5, censored=True) for i in range(50)])
    argv = [
        "train",
        "--from-feedback",
        str(tmp_path / "fb"),
        "--data-dir",
        str(tmp_path / "no-shared-data"),
        "--out",
        str(tmp_path / "model"),
        "--no-embedding",
        "--max-trees",
        "40",
        "--threads",
        "1",
    ]
    assert cli.main(argv) == 0
    assert "training on the feedback only" in capsys.readouterr().out
    metadata = read_metadata(tmp_path / "model")
    assert metadata.generators == ("served:tiny",) and metadata.default_generator == "served:tiny"
    assert metadata.served_model_generators == {"tiny": "served:tiny"}
    assert all(name.startswith("feedback/feedback-") for name in metadata.data_files_sha256)
    assert metadata.training["num_examples"]["fit"] + metadata.training["num_examples"]["heldout"] < 300  # censored out
    assert metadata.heldout_metrics["served:tiny"]["model"]["kendall_tau"] > 0.6
    settings = LoadSettings(tmp_path / "model", default_cache_dir(), 1, 1, allow_cuda=False)
    predictor = PredictorLoader(settings).load()
    few, many = predictor.predict(
        [
            PromptInput("Give me 2 ideas about topic 1", 9, "tiny"),
            PromptInput("Give me 14 ideas about topic 2", 9, "tiny"),
        ]
    )
    assert few.quantiles[1].num_tokens < many.quantiles[1].num_tokens


def test_train_from_feedback_needs_enough_records(tmp_path, capsys):
    from services.predictor import cli

    FeedbackStore(tmp_path / "fb").append([_record(i, tokens=10) for i in range(5)])
    argv = ["train", "--from-feedback", str(tmp_path / "fb"), "--no-sharegpt", "--out", str(tmp_path / "m")]
    assert cli.main(argv) == 2
    assert "at least 50 are needed" in capsys.readouterr().err
