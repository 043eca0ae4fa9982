"""XGBoost -> ONNX export, the training command on synthetic data, and the served LengthModel."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

xgboost = pytest.importorskip("xgboost")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxmltools")

from services.predictor import cli, features  # noqa: E402
from services.predictor.artifact import INPUT_NAME, read_metadata  # noqa: E402
from services.predictor.config import DEFAULT_MODEL_DIR  # noqa: E402
from services.predictor.data import SHAREGPT_FILE  # noqa: E402
from services.predictor.export import Head, HeadTransform, merge_heads  # noqa: E402
from services.predictor.model import LengthModel, PromptInput, make_monotone  # noqa: E402


def _synthetic_xy(num_rows: int = 600, num_features: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_rows, num_features)).astype(np.float32)
    y = np.exp(3.0 + x[:, 0] + 0.5 * rng.normal(size=num_rows))
    return x, y


def test_merged_onnx_equals_xgboost_for_every_head():
    x, y = _synthetic_xy()
    params = {"max_depth": 4, "eta": 0.3, "seed": 0, "nthread": 1}
    specs = [
        ("mean_tokens", {"objective": "reg:tweedie"}, y, HeadTransform.IDENTITY),
        ("q10_tokens", {"objective": "reg:quantileerror", "quantile_alpha": 0.1}, np.log1p(y), HeadTransform.EXPM1),
        ("q90_tokens", {"objective": "reg:quantileerror", "quantile_alpha": 0.9}, np.log1p(y), HeadTransform.EXPM1),
        ("sq_tokens", {"objective": "reg:squarederror"}, y, HeadTransform.IDENTITY),
    ]
    heads = [
        Head(name, xgboost.train({**params, **objective}, xgboost.DMatrix(x, label=label), 30), transform)
        for name, objective, label, transform in specs
    ]
    model = merge_heads(heads, num_features=x.shape[1])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run([head.output_name for head in heads], {INPUT_NAME: x})
    for head, got in zip(heads, outputs):
        raw = head.booster.predict(xgboost.DMatrix(x))
        want = np.expm1(raw) if head.transform is HeadTransform.EXPM1 else raw
        assert got.shape == (x.shape[0], 1)
        np.testing.assert_allclose(got.ravel(), want, rtol=1e-4, atol=1e-3, err_msg=head.output_name)


def test_make_monotone_floors_and_orders():
    crossed = np.array([[5.0, 3.0, 9.0], [0.2, 0.1, 0.5], [1.0, 2.0, 3.0]])
    fixed = make_monotone(crossed)
    np.testing.assert_array_equal(fixed, [[5.0, 5.0, 9.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])


def _write_synthetic_data(data_dir: Path, num_records: int = 500) -> None:
    """A ShareGPT-shaped file where asking for N items makes the answer ~40 N tokens long."""
    rng = np.random.default_rng(1)
    path = data_dir / SHAREGPT_FILE
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt", encoding="utf-8") as stream:
        for index in range(num_records):
            num_items = int(rng.integers(1, 20))
            prompt = f"Give me {num_items} ideas about topic {index}" if index % 2 else f"Say hi to {index}"
            length = 40 * num_items if index % 2 else 5
            record = {
                "id": f"c{index}_0",
                "prompt": prompt,
                "response": "",
                "prompt_llama2_tokens": len(prompt) // 4,
                "response_llama2_tokens": int(length * rng.uniform(0.8, 1.2)),
            }
            stream.write(json.dumps(record) + "\n")


def test_train_command_on_synthetic_data_is_deterministic_and_loadable(tmp_path, capsys):
    _write_synthetic_data(tmp_path / "data")
    argv = ["train", "--data-dir", str(tmp_path / "data"), "--seed", "3", "--max-trees", "40", "--threads", "1"]
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "held-out metrics" in printed and "kendall_tau_p50" in printed
    first, second = read_metadata(tmp_path / "a"), read_metadata(tmp_path / "b")
    assert first.model_version == second.model_version  # same seed, same bytes
    assert first.seed == 3 and first.feature_names == features.FEATURE_NAMES
    assert set(first.data_files_sha256) == {SHAREGPT_FILE}
    assert first.heldout_metrics["sharegpt"]["kendall_tau_p50"] > 0.5  # the signal is strong
    model = LengthModel(tmp_path / "a", allow_cuda=False)
    short, long = model.predict([PromptInput("Say hi to 7", 3), PromptInput("Give me 15 ideas about topic 9", 8)])
    assert short.quantiles[1].num_tokens < long.quantiles[1].num_tokens


def test_train_command_reports_missing_data_dir(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_model_refuses_other_feature_version(tmp_path):
    (tmp_path / "model.onnx").write_bytes((DEFAULT_MODEL_DIR / "model.onnx").read_bytes())
    raw = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())
    raw["feature_version"] = "lex-v0"
    (tmp_path / "metadata.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="retrain"):
        LengthModel(tmp_path, allow_cuda=False)


def test_shipped_default_model_loads_and_predicts_monotone():
    assert (DEFAULT_MODEL_DIR / "model.onnx").stat().st_size < 5_000_000
    model = LengthModel(DEFAULT_MODEL_DIR, allow_cuda=False)
    assert model.model_version.startswith(f"lenpred-{features.FEATURE_VERSION}-")
    assert model.metadata.quantile_levels == (0.1, 0.5, 0.9)
    assert model.metadata.heldout_metrics["all"]["kendall_tau_p50"] > 0.0
    prompts = ["Hi", "Write a detailed 2000-word essay on Rome", "", "x" * 50_000]
    predictions = model.predict([PromptInput(text, 0) for text in prompts])
    assert len(predictions) == len(prompts)
    for prediction in predictions:
        values = [quantile.num_tokens for quantile in prediction.quantiles]
        assert values == sorted(values) and values[0] >= 1.0 and prediction.mean_tokens >= 1.0
        assert prediction.model_version == model.model_version
    assert model.predict([]) == []
