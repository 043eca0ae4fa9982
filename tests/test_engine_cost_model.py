"""The online step-cost model learns the engine's step times and publishes rates with a version."""

import numpy as np
import pytest

from services.engine.scheduler import OnlineStepCostModel, StepCostCoefficients

TRUE = StepCostCoefficients(base_s=0.02, per_token_s=3e-4, per_kv_token_s=2e-6)


def test_it_recovers_the_coefficients_of_a_linear_engine():
    model = OnlineStepCostModel(StepCostCoefficients(0.001, 1e-6, 0.0), refit_every=32)
    rng = np.random.default_rng(0)
    for _ in range(256):
        tokens, kv = int(rng.integers(1, 512)), int(rng.integers(0, 20_000))
        model.observe(tokens, kv, TRUE.step_time_s(tokens, kv) * (1 + rng.normal(0, 0.01)))
    fitted = model.coefficients
    assert fitted.base_s == pytest.approx(TRUE.base_s, rel=0.1)
    assert fitted.per_token_s == pytest.approx(TRUE.per_token_s, rel=0.05)
    assert fitted.per_kv_token_s == pytest.approx(TRUE.per_kv_token_s, rel=0.1)
    assert model.prefill_s_per_token == pytest.approx(TRUE.per_token_s, rel=0.05)
    assert model.version >= 1


def test_rates_change_only_at_a_refit_and_only_when_they_move():
    model = OnlineStepCostModel(TRUE, refit_every=16, min_steps_to_fit=16)
    for _ in range(15):
        model.observe(100, 1000, 1.0)  # far slower than the prior, but no refit yet
    assert model.version == 0 and model.decode_step_s == pytest.approx(TRUE.step_time_s(1, 0))
    model.observe(100, 1000, 1.0)
    assert model.version == 1 and model.decode_step_s > 0.5
    for _ in range(400):  # the mean step time converges to 1 s
        model.observe(100, 1000, 1.0)
    settled = model.version
    for _ in range(64):
        model.observe(100, 1000, 1.0)
    assert model.version == settled  # nothing moved by more than the republish threshold


def test_decode_only_steps_of_one_batch_size_do_not_break_the_fit():
    model = OnlineStepCostModel(TRUE, refit_every=8, min_steps_to_fit=8)
    for _ in range(32):
        model.observe(64, 0, 0.05)
    assert all(value >= 0 for value in (model.coefficients.base_s, model.coefficients.per_token_s))


def test_a_term_the_data_pushes_negative_is_dropped_and_the_others_refitted():
    """Steps whose time falls with the KV read (noise, or caches warming) push the unconstrained KV
    term below zero; the fit must then be the best one without that term, not a clipped one."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 64, 128)
    kv = rng.integers(0, 4_000, 128)
    times = 0.05 + 1e-3 * tokens - 2e-6 * kv  # a negative KV slope no engine has
    model = OnlineStepCostModel(refit_every=128, min_steps_to_fit=32)
    for step in zip(tokens, kv, times, strict=True):
        model.observe(int(step[0]), int(step[1]), float(step[2]))
    fitted = model.coefficients
    assert fitted.per_kv_token_s == 0.0
    without_kv = np.linalg.lstsq(np.column_stack([np.ones(128), tokens]), times, rcond=None)[0]
    assert fitted.base_s == pytest.approx(without_kv[0]) and fitted.per_token_s == pytest.approx(without_kv[1])
