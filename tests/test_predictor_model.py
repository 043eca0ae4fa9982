"""XGBoost -> ONNX export, the training command on synthetic data, and the served LengthPredictor."""

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
from services.predictor.artifact import INPUT_NAME, TEXT_HEADS_FILE_NAME, read_metadata  # noqa: E402
from services.predictor.config import DEFAULT_MODEL_DIR  # noqa: E402
from services.predictor.data import SHAREGPT_FILE  # noqa: E402
from services.predictor.embedding import EMBEDDING_DIM, EmbeddingSpec, default_cache_dir  # noqa: E402
from services.predictor.export import Head, HeadTransform, merge_heads  # noqa: E402
from services.predictor.model import LengthModel, LengthPredictor, PromptInput, make_monotone  # noqa: E402
from services.predictor.model_inputs import INPUT_VERSION  # noqa: E402
from services.predictor.reload import LoadSettings, PredictorLoader  # noqa: E402
from services.predictor.text_heads import TextHeads  # noqa: E402


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


def _load(model_dir: Path) -> LengthPredictor:
    settings = LoadSettings(model_dir, default_cache_dir(), tree_threads=1, embedding_threads=1, allow_cuda=False)
    return PredictorLoader(settings).load()


def test_train_command_on_synthetic_data_is_deterministic_and_loadable(tmp_path, capsys):
    _write_synthetic_data(tmp_path / "data")
    argv = [
        "train",
        "--data-dir",
        str(tmp_path / "data"),
        "--seed",
        "3",
        "--max-trees",
        "40",
        "--threads",
        "1",
        "--no-embedding",
    ]
    assert cli.main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--out", str(tmp_path / "b")]) == 0
    printed = capsys.readouterr().out
    assert "held-out metrics" in printed and "baseline_prompt_length" in printed
    first, second = read_metadata(tmp_path / "a"), read_metadata(tmp_path / "b")
    assert first.model_version == second.model_version  # same seed, same bytes
    assert (tmp_path / "a" / "metadata.json").read_bytes() == (tmp_path / "b" / "metadata.json").read_bytes()
    assert set(first.quantile_calibration["*"]["offsets"]) == {"0.1", "0.9"}  # calibration step (calibration.py)
    assert first.seed == 3 and first.feature_names[: features.NUM_FEATURES] == features.FEATURE_NAMES
    assert first.generators == ("sharegpt",) and first.default_generator == "sharegpt"
    assert set(first.data_files_sha256) == {SHAREGPT_FILE}
    heldout = first.heldout_metrics["sharegpt"]
    assert heldout["model"]["kendall_tau"] > 0.5  # the signal is strong
    assert heldout["model"]["mae_tokens"] < heldout["baseline_train_median"]["mae_tokens"]
    predictor = _load(tmp_path / "a")
    short, long = predictor.predict([PromptInput("Say hi to 7", 3), PromptInput("Give me 15 ideas about topic 9", 8)])
    assert short.quantiles[1].num_tokens < long.quantiles[1].num_tokens


def test_training_with_embedding_exports_what_xgboost_predicts(tmp_path):
    _write_synthetic_data(tmp_path / "data", num_records=160)
    argv = [
        "train",
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "m"),
        "--max-trees",
        "20",
        "--threads",
        "1",
        "--frozen-embedding",
    ]  # the fine-tuned encoder: test_predictor_finetune.py
    assert cli.main(argv) == 0
    metadata = read_metadata(tmp_path / "m")
    assert metadata.embedding_version == EmbeddingSpec().version
    assert metadata.feature_names[features.NUM_FEATURES :] == (
        "text_head_tfidf",
        "text_head_embedding",
        "generator=sharegpt",
    )
    heads = TextHeads.from_bytes((tmp_path / "m" / TEXT_HEADS_FILE_NAME).read_bytes())
    assert heads.embedding_coef.shape == (EMBEDDING_DIM + 1,) and heads.idf.dtype == np.float16
    assert metadata.training["onnx_vs_xgboost_max_relative_difference"] < 1e-3
    predictor = _load(tmp_path / "m")
    prompts = [PromptInput("Give me 3 ideas about topic 5", 8), PromptInput("Say hi to 4", 3)]
    served = predictor.predict(prompts)
    mean, quantiles = predictor.model.predict_matrix(predictor.input_matrix(prompts))
    assert [d.mean_tokens for d in served] == pytest.approx(mean.tolist())
    assert [d.quantiles[1].num_tokens for d in served] == pytest.approx(quantiles[:, 1].tolist())


def test_train_command_reports_missing_data_dir(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "data file not found" in capsys.readouterr().err


def _copy_default(tmp_path: Path) -> dict:
    for name in ("model.onnx", TEXT_HEADS_FILE_NAME):
        (tmp_path / name).write_bytes((DEFAULT_MODEL_DIR / name).read_bytes())
    return json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())


def test_model_refuses_other_inputs_and_torn_files(tmp_path):
    raw = _copy_default(tmp_path)
    raw["input_version"] = "lex-v0"
    (tmp_path / "metadata.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="retrain"):
        LengthModel(tmp_path, allow_cuda=False)
    raw = _copy_default(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps(raw))
    (tmp_path / "model.onnx").write_bytes((DEFAULT_MODEL_DIR / "model.onnx").read_bytes()[:-10])
    with pytest.raises(ValueError, match="does not match"):
        LengthModel(tmp_path, allow_cuda=False)


def test_shipped_default_model_loads_and_predicts_monotone():
    assert (DEFAULT_MODEL_DIR / "model.onnx").stat().st_size < 5_000_000
    predictor = _load(DEFAULT_MODEL_DIR)
    metadata = predictor.model.metadata
    assert predictor.model_version.startswith(f"lenpred-{INPUT_VERSION}-")
    assert metadata.quantile_levels == (0.1, 0.5, 0.9) and (metadata.embedding_version or metadata.encoder_version)
    assert metadata.default_generator == "sharegpt"
    sharegpt = metadata.heldout_metrics["sharegpt"]
    assert sharegpt["model"]["kendall_tau"] > sharegpt["baseline_prompt_length"]["kendall_tau"]
    prompts = ["Hi", "Write a detailed 2000-word essay on Rome", "", "x" * 50_000]
    predictions = predictor.predict([PromptInput(text, 0 if text else 5) for text in prompts])
    assert len(predictions) == len(prompts)
    for prediction in predictions:
        values = [quantile.num_tokens for quantile in prediction.quantiles]
        assert values == sorted(values) and values[0] >= 1.0 and prediction.mean_tokens >= 1.0
        assert prediction.model_version == predictor.model_version
    assert predictions[0].quantiles[1].num_tokens < predictions[1].quantiles[1].num_tokens
    assert predictor.predict([]) == []


def test_default_generator_override_picks_the_workload():
    settings = LoadSettings(
        DEFAULT_MODEL_DIR, default_cache_dir(), 1, 1, allow_cuda=False, default_generator="alpaca_eval:text_davinci_003"
    )
    davinci = PredictorLoader(settings).load()
    prompt = [PromptInput("Explain how a transformer neural network works, step by step.", 14, "tiny-llama")]
    shorter = davinci.predict(prompt)[0].quantiles[1].num_tokens
    longer = _load(DEFAULT_MODEL_DIR).predict(prompt)[0].quantiles[1].num_tokens  # sharegpt (ChatGPT)
    assert shorter < longer
    with pytest.raises(ValueError, match="not one of"):
        PredictorLoader(LoadSettings(DEFAULT_MODEL_DIR, default_cache_dir(), 1, 1, False, "nobody")).load()
