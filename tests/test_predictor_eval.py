"""`alise predictor eval` with the shipped model: plain JSONL logs, and the shared ShareGPT file."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from services.cli import predictor_cmd  # noqa: E402
from services.predictor.artifact import read_metadata  # noqa: E402
from services.predictor.config import DEFAULT_MODEL_DIR  # noqa: E402
from services.predictor.data import SHAREGPT_FILE  # noqa: E402
from tests.shared_data import SHARED_DATA_DIR, requires_shared_data  # noqa: E402

PREDICTORS = ("model", "baseline_train_median", "baseline_prompt_length")


def test_eval_on_plain_jsonl_writes_json_and_png(tmp_path, capsys):
    rows = [
        {"prompt": "Hi!", "output_tokens": 9},
        {"prompt": "Write a 1500-word essay on Rome.", "output_tokens": 1900},
    ]
    rows += [{"prompt": f"List {n} fruits.", "output_tokens": 20 * n, "prompt_tokens": 5} for n in range(1, 25)]
    data_file = tmp_path / "logs.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = [
        "eval",
        "--data",
        str(data_file),
        "--out-dir",
        str(tmp_path / "out"),
        "--name",
        "mine",
        "--latency-prompts",
        "5",
        "--threads",
        "1",
    ]
    assert predictor_cmd.main(argv) == 0
    printed = capsys.readouterr().out
    assert "baseline_prompt_length" in printed and "latency" in printed
    report = json.loads((tmp_path / "out" / "mine.json").read_text())
    assert (tmp_path / "out" / "mine.png").stat().st_size > 10_000
    assert report["model_version"] == read_metadata(DEFAULT_MODEL_DIR).model_version
    assert report["files"][0]["num_rows"] == len(rows) and not report["files"][0]["heldout_only"]
    (split,) = report["metrics"]  # one source, so no separate "all"
    for predictor in PREDICTORS:
        metrics = report["metrics"][split][predictor]
        assert metrics["num_examples"] == len(rows)
        for name in ("mae_tokens", "acc_50", "acc_100", "bucket_accuracy", "coverage_p10", "coverage_p90"):
            assert metrics[name] is not None
    assert report["metrics"][split]["baseline_train_median"]["kendall_tau"] is None  # a constant ranks nothing
    # "Hi" < "list N" < "essay" is read (alone worth tau ~0.15); among the 24 list rows the models
    # barely resolve N (flat ~180 tokens: frozen-embedding models 0.27-0.36, the fine-tuned encoder 0.17).
    assert report["metrics"][split]["model"]["kendall_tau"] > 0.1
    assert report["latency"]["single_p50_ms"] > 0 and report["machine"]["num_cpus"] >= 1


def test_eval_rejects_a_file_without_the_fields(tmp_path, capsys):
    data_file = tmp_path / "bad.jsonl"
    data_file.write_text('{"text": "hi"}\n')
    assert predictor_cmd.main(["eval", "--data", str(data_file), "--out-dir", str(tmp_path)]) == 2
    assert "unknown record layout" in capsys.readouterr().err


@requires_shared_data
def test_eval_on_the_training_file_keeps_only_heldout_groups(tmp_path):
    argv = [
        "eval",
        "--data",
        str(SHARED_DATA_DIR / SHAREGPT_FILE),
        "--max-examples",
        "60",
        "--latency-prompts",
        "3",
        "--out-dir",
        str(tmp_path),
        "--name",
        "sg",
        "--threads",
        "1",
    ]
    assert predictor_cmd.main(argv) == 0
    report = json.loads((tmp_path / "sg.json").read_text())
    assert report["files"][0]["heldout_only"] and report["metrics"]["sharegpt"]["model"]["num_examples"] == 60
