"""Training on the real shared data (a subsample, so it stays around a minute on 2 cores; its speed
is not asserted here: a loaded CI machine took 81 s once, and speed belongs in benchmarks)."""

from __future__ import annotations

import pytest

from tests.shared_data import SHARED_DATA_DIR, requires_shared_data

pytest.importorskip("xgboost")
pytest.importorskip("onnxmltools")

from services.predictor import cli  # noqa: E402
from services.predictor.artifact import read_metadata  # noqa: E402
from services.predictor.data import ALPACA_EVAL_FILE, SHAREGPT_FILE  # noqa: E402

pytestmark = [requires_shared_data, pytest.mark.shared_data]


def test_training_on_shared_data_beats_prompt_length_baseline(tmp_path, capsys):
    argv = [
        "train",
        "--out",
        str(tmp_path / "model"),
        "--data-dir",
        str(SHARED_DATA_DIR),
        "--seed",
        "0",
        "--generator",
        "text_davinci_003",
        "--max-examples",
        "3000",
        "--max-trees",
        "80",
        "--no-embedding",  # a fresh CI machine has no embedding cache: MiniLM on 3000 prompts takes minutes
    ]
    assert cli.main(argv) == 0
    assert "baseline_prompt_length" in capsys.readouterr().out
    metadata = read_metadata(tmp_path / "model")
    assert set(metadata.data_files_sha256) == {SHAREGPT_FILE, ALPACA_EVAL_FILE}
    assert all(len(digest) == 64 for digest in metadata.data_files_sha256.values())
    assert metadata.generators == ("alpaca_eval:text_davinci_003", "sharegpt")
    sharegpt = metadata.heldout_metrics["sharegpt"]
    assert sharegpt["model"]["num_examples"] > 300
    assert sharegpt["model"]["kendall_tau"] > max(0.1, sharegpt["baseline_prompt_length"]["kendall_tau"])
    assert sharegpt["model"]["mae_tokens"] < sharegpt["baseline_train_median"]["mae_tokens"]
    assert 0.6 < metadata.heldout_metrics["all"]["model"]["coverage_p90"] <= 1.0
