"""`alise bench spec` method columns with a preset ("ngram:4@prev"): parsing, and the speculator it swaps in."""

from __future__ import annotations

import pytest

from services.bench.spec_bench import fitted_turn_down_speculator, previous_ngram_speculator, share_valued_speculator
from services.bench.spec_report import BenchMethod, BenchPreset
from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.spec_config import SpeculativeConfig
from services.engine.spec.speculator import Speculator


def test_a_preset_column_parses_and_stays_apart_from_the_plain_one():
    column = BenchMethod("ngram:4@prev")
    assert (column.method, column.num_speculative_tokens, column.preset) == (
        SpeculativeMethod.NGRAM,
        4,
        BenchPreset.PREV,
    )
    assert BenchMethod("ngram@prev").num_speculative_tokens is None
    assert BenchMethod("ngram").preset is None and BenchMethod("ngram") == SpeculativeMethod.NGRAM
    assert column != SpeculativeMethod.NGRAM and len({column, BenchMethod("ngram:4")}) == 2


@pytest.mark.parametrize("text", ["ngram@next", "early-exit@prev", "off@prev", "ngram:0@prev"])
def test_a_bad_preset_column_is_a_value_error(text):
    with pytest.raises(ValueError):
        BenchMethod(text)


def test_the_prev_preset_restores_the_earlier_rules_and_keeps_the_rest():
    current = Speculator(SpeculativeConfig(SpeculativeMethod.NGRAM, 4), OnlineStepCostModel(), 2048)
    assert current.two_rate_model and current.config.ngram.copy_past_end
    previous = previous_ngram_speculator(current)
    ngram = previous.config.ngram
    assert not previous.two_rate_model and not ngram.copy_past_end and ngram.num_unigram_drafts == 0
    assert (ngram.min_n, ngram.max_n, ngram.drafts_per_matched_token) == (2, 4, 2)
    assert previous.config.num_speculative_tokens == 4 and previous.cost_model is current.cost_model
    assert previous.max_model_len == 2048


def test_the_fit_preset_turns_drafting_down_on_the_step_cost_fit_and_keeps_the_drafting_rules():
    current = Speculator(SpeculativeConfig(SpeculativeMethod.NGRAM), OnlineStepCostModel(), 2048)
    assert BenchMethod("ngram@fit").preset is BenchPreset.FIT and current.meter.config.measured
    fitted = fitted_turn_down_speculator(current)
    assert not fitted.meter.config.measured and fitted.config == current.config
    assert fitted.cost_model is current.cost_model and fitted.two_rate_model


def test_the_batch_preset_values_every_decode_s_token_alike():
    from services.bench.spec_bench import batch_valued_speculator

    current = Speculator(SpeculativeConfig(SpeculativeMethod.NGRAM), OnlineStepCostModel(), 2048)
    batch = batch_valued_speculator(current)
    assert BenchMethod("ngram@batch").preset is BenchPreset.BATCH and current.meter.config.critical_path
    assert not batch.meter.config.critical_path and batch.meter.config.closed_batch_value
    assert batch.config == current.config and batch.cost_model is current.cost_model


def test_the_share_preset_values_a_token_at_a_decode_s_full_share():
    current = Speculator(SpeculativeConfig(SpeculativeMethod.NGRAM), OnlineStepCostModel(), 2048)
    shared = share_valued_speculator(current)
    assert BenchMethod("ngram@share").preset is BenchPreset.SHARE and current.meter.config.closed_batch_value
    assert not shared.meter.config.closed_batch_value and shared.meter.config.measured
    assert shared.config == current.config and shared.cost_model is current.cost_model


def test_the_lowpause_preset_pauses_requests_only_below_the_lower_acceptance():
    from services.bench.spec_bench import LOW_PAUSE_ACCEPTANCE, low_pause_speculator

    current = Speculator(SpeculativeConfig(SpeculativeMethod.NGRAM), OnlineStepCostModel(), 2048)
    low = low_pause_speculator(current)
    assert BenchMethod("ngram@lowpause").preset is BenchPreset.LOW_PAUSE
    for accepted in (0, 0, 1, 0):  # 4 verifies of 8 drafts: an estimated acceptance of 0.16, judged after the 4th
        current.tracker.record("r", 8, accepted)
        low.tracker.record("r", 8, accepted)
    assert current.tracker.num_drafts("r", 8) == 0 and low.tracker.num_drafts("r", 8) == 8
    assert LOW_PAUSE_ACCEPTANCE < 0.15 and low.config == current.config and low.meter.config == current.meter.config
