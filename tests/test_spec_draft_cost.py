"""The draft-cost meter learns what a verify and a draft add to a decode step; the turn-down drafts at batch 1,
stops at a batch whose verifies cost more than they save, probes now and then, and starts again."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.engine.request import Request
from services.engine.scheduler.cost_model import OnlineStepCostModel, StepCostCoefficients
from services.engine.scheduler.output import ScheduledChunk, SchedulerOutput
from services.engine.spec.draft_cost import (
    DraftCostConfig,
    DraftCostMeter,
    DraftCosts,
    StepClock,
    critical_token_value_s,
    expected_savings_s,
    num_drafts_worth,
    token_value_s,
)
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.spec_config import SpeculativeConfig
from services.engine.spec.speculator import Speculator
from tests.engine_factories import make_decoding_request

# Shaped like SmolLM2-135M on one CPU thread (bf16): a decode step ~70 ms + ~10 ms per decode, a verify's own
# attention pass ~12 ms, a draft ~4 ms (a fed token's matmuls and LM head).
CPU = DraftCosts(base_s=0.060, per_decode_s=0.010, per_verify_s=0.012, per_draft_s=0.004)
# What the step-cost fit saw on CPU: a cheap fed token, no verify term.
UNDERPRICED = StepCostCoefficients(base_s=0.060, per_token_s=0.002, per_kv_token_s=0.0)


def _measured_step_s(num_decodes: int, num_verifies: int, num_drafts: int) -> float:
    return CPU.plain_step_s(num_decodes) + CPU.per_verify_s * num_verifies + CPU.per_draft_s * num_drafts


def test_the_meter_recovers_a_verify_and_a_draft_cost_from_decode_steps():
    config = DraftCostConfig(min_steps_to_fit=32, fit_per_verify=True)
    meter = DraftCostMeter(OnlineStepCostModel(UNDERPRICED), config)
    assert meter.costs(16) == DraftCosts(0.060, 0.002, 0.0, 0.002)  # before a fit: the step-cost fit's terms
    rng = np.random.default_rng(0)
    for _ in range(128):
        num_decodes = int(rng.integers(8, 16))  # one batch-size class: 8-15
        num_verifies = int(rng.integers(0, num_decodes + 1))
        num_drafts = int(sum(rng.integers(1, 17) for _ in range(num_verifies)))
        step_s = _measured_step_s(num_decodes, num_verifies, num_drafts) * (1 + rng.normal(0, 0.02))
        meter.record(num_decodes, num_verifies, num_drafts, step_s)
    costs = meter.costs(12)
    assert list(meter.fitted) == [8]
    assert costs.per_verify_s == pytest.approx(CPU.per_verify_s, rel=0.25)
    assert costs.per_draft_s == pytest.approx(CPU.per_draft_s, rel=0.1)
    assert costs.plain_step_s(12) == pytest.approx(CPU.plain_step_s(12), rel=0.05)
    assert meter.costs(1) == costs  # a class without a fit borrows the nearest one's
    # another class's steps, at other costs, get their own fit
    for step in range(32):
        num_verifies = step % 2
        meter.record(1, num_verifies, 4 * num_verifies, 0.070 + 0.010 * num_verifies)
    assert meter.costs(1).verify_s(4) == pytest.approx(0.010) and meter.costs(12) == costs


def test_one_batch_size_puts_the_decodes_in_the_base_and_steps_without_drafts_are_needed():
    config = DraftCostConfig(min_steps_to_fit=8, refit_every_steps=8, fit_per_verify=True)
    meter = DraftCostMeter(OnlineStepCostModel(UNDERPRICED), config)
    for _ in range(16):  # every step verifies: a verify cannot be told from a decode
        meter.record(16, 16, 32, _measured_step_s(16, 16, 32))
    assert not meter.fitted
    for num_verifies in [0, 4, 0, 8, 0, 2, 16, 0]:
        meter.record(16, num_verifies, 3 * num_verifies, _measured_step_s(16, num_verifies, 3 * num_verifies))
    costs = meter.costs(16)
    assert costs.plain_step_s(16) == pytest.approx(CPU.plain_step_s(16))
    assert costs.verify_s(3) == pytest.approx(CPU.verify_s(3))
    assert costs.per_decode_s == pytest.approx(UNDERPRICED.per_token_s)  # the split of a plain step: the fit's slope


def test_without_a_verify_term_drafts_carry_the_cost_that_verifies_and_drafts_add_together():
    """Verifies attended in the batch add only their drafts. Real steps' verifies and drafts rise together
    (about k drafts per verify), so a fit with both columns may put their joint cost on either; at batch 16 it
    once priced drafts at 0 and every verify then drafted the full k. By default there is no verify column."""
    batched = DraftCosts(base_s=0.060, per_decode_s=0.010, per_verify_s=0.0, per_draft_s=0.004)

    def fitted(fit_per_verify: bool) -> DraftCosts:
        rng = np.random.default_rng(9)
        config = DraftCostConfig(min_steps_to_fit=32, fit_per_verify=fit_per_verify)
        meter = DraftCostMeter(OnlineStepCostModel(UNDERPRICED), config)
        for _ in range(64):
            num_verifies = int(rng.integers(0, 17))
            num_drafts = 8 * num_verifies + int(rng.integers(-1, 2)) * (num_verifies > 0)  # nearly collinear
            step_s = batched.plain_step_s(16) + batched.per_draft_s * num_drafts
            meter.record(16, num_verifies, num_drafts, step_s * (1 + rng.normal(0, 0.05)))
        return meter.costs(16)

    costs = fitted(fit_per_verify=False)
    assert costs.per_verify_s == 0.0
    assert costs.per_draft_s == pytest.approx(batched.per_draft_s, rel=0.15)
    with_verify_term = fitted(fit_per_verify=True)  # the same steps: the joint cost lands on the verifies
    assert with_verify_term.per_draft_s < batched.per_draft_s / 2 < with_verify_term.per_verify_s / 8


def test_a_fit_that_prices_drafting_at_nothing_is_not_taken():
    """Steps with drafts that ran no dearer than those without (noise at one batch size) would fit 0 per draft,
    and every proposal would look free: the class keeps its previous fit instead."""
    config = DraftCostConfig(window_steps=8, min_steps_to_fit=8, refit_every_steps=8)
    meter = DraftCostMeter(OnlineStepCostModel(UNDERPRICED), config)
    for num_verifies in [0, 4, 0, 8, 0, 2, 16, 0]:
        meter.record(16, num_verifies, 3 * num_verifies, _measured_step_s(16, 0, 3 * num_verifies))
    before = meter.costs(16)
    assert before.per_draft_s == pytest.approx(CPU.per_draft_s)
    for num_verifies in [0, 4, 0, 8, 0, 2, 16, 0]:  # the next window: drafted steps ran cheaper than plain ones
        meter.record(16, num_verifies, 3 * num_verifies, 0.9 * _measured_step_s(16, 0, 0) if num_verifies else
                     _measured_step_s(16, 0, 0))  # fmt: skip
    assert meter.costs(16) == before


def test_settle_keeps_only_the_planned_decode_step():
    cost_model = OnlineStepCostModel(UNDERPRICED)
    meter = DraftCostMeter(cost_model, DraftCostConfig(min_steps_to_fit=1, refit_every_steps=1))
    meter.planned(4, 1, 3)
    cost_model.observe(4 + 3 + 100, 0, 0.5)  # a prefill chunk joined: not a decode step
    meter.settle()
    meter.planned(4, 0, 0)
    cost_model.observe(4, 0, 0.1)
    cost_model.observe(4, 0, 0.1)  # two steps since the plan: which one was planned is unknown
    meter.settle()
    meter.settle()  # nothing planned
    assert not meter._classes
    meter.planned(4, 1, 3)
    cost_model.observe(7, 0, 0.2)
    meter.settle()
    assert list(meter._classes[(4).bit_length()].steps) == [(4, 1, 3, 0.2)]


def test_drafts_pay_at_batch_1_and_not_at_batch_16_unless_copies_run_long():
    assert num_drafts_worth(CPU, 1, 0.5, 0.9, 16)[0] >= 8  # a decode's share is a whole step
    assert num_drafts_worth(CPU, 16, 0.5, 0.6, 16)[0] == 0  # a sixteenth of a step: a verify costs more
    assert num_drafts_worth(CPU, 16, 0.9, 0.97, 16)[0] > 0  # a long copy still pays
    # the step-cost fit's prices would have drafted at batch 16 (the slowdown this replaces)
    underpriced = DraftCosts(UNDERPRICED.base_s, UNDERPRICED.per_token_s, 0.0, UNDERPRICED.per_token_s)
    assert num_drafts_worth(underpriced, 16, 0.5, 0.6, 16)[0] > 0
    savings = expected_savings_s(CPU, 0.5, 0.9, 16, s_per_token=0.070)
    assert savings[0] == 0.0 and savings[1] == pytest.approx(0.5 * 0.070 - 0.016)


def _decoding(request_id: str, copies: bool = True) -> Request:
    """A decoding request; with copies, a 13-token match lets n-gram draft 16 tokens of a copy, else no
    suffix recurs and nothing is drafted."""
    copy = (
        list(range(100, 160))
        if copies
        else list(range(1000 + 100 * int(request_id[1:]), 1060 + 100 * int(request_id[1:])))
    )
    prompt = copy + [1] + copy[:12] if copies else copy
    return make_decoding_request(request_id, prompt, [copy[12] if copies else 7], max_tokens=400)


def _speculator(probe_every_steps: int = 8, critical_path: bool = True) -> tuple[Speculator, OnlineStepCostModel]:
    cost_model = OnlineStepCostModel(UNDERPRICED)
    # CPU-shaped steps with a verify's own attention pass (per_verify_s 12 ms): the meter fits that term
    config = DraftCostConfig(min_steps_to_fit=16, refit_every_steps=4, probe_every_steps=probe_every_steps,
                             fit_per_verify=True, critical_path=critical_path)  # fmt: skip
    speculator = Speculator(SpeculativeConfig(SpeculativeMethod.NGRAM), cost_model, 4096, draft_costs=config)
    return speculator, cost_model


def _step(speculator: Speculator, cost_model: OnlineStepCostModel, running: list[Request]) -> int:
    """Plans, 'runs' the step at the CPU-shaped cost, accepts the first draft of each verify; the drafts verified."""
    speculator.plan(running)
    verifying = [request for request in running if request.num_draft_slots]
    num_drafts = sum(request.num_draft_slots for request in verifying)
    cost_model.observe(len(running) + num_drafts, 0, _measured_step_s(len(running), len(verifying), num_drafts))
    chunks = [ScheduledChunk(r, r.num_draft_slots + 1, True, r.num_tokens + r.num_draft_slots, r.num_draft_slots)
              for r in verifying]  # fmt: skip
    if chunks:
        speculator.observe(
            SchedulerOutput(chunks), {r.request_id: [0] * (1 + min(1, r.num_draft_slots)) for r in verifying}
        )
    return num_drafts


def test_a_batch_stops_drafting_where_verifies_cost_more_probes_and_starts_again_when_it_shrinks():
    speculator, cost_model = _speculator(probe_every_steps=8)
    copies = [_decoding(f"c{i}") for i in range(16)]
    plain = [_decoding(f"p{i}", copies=False) for i in range(16)]
    # the step-cost fit underprices drafts: the batch drafts at first, and so the meter measures
    # (steps with 0, 4, 8 and 16 copying requests in a batch of 16)
    drafted = [_step(speculator, cost_model, copies[: 4 * (step % 5)] + plain[4 * (step % 5) :]) for step in range(40)]
    assert sum(drafted[:5]) > 0 and speculator.meter.fitted
    # measured: at batch 16 a verify costs more than its drafts save (first drafts pass, the rest
    # not): turned down, one proposal probed every 8 steps
    drafted = [_step(speculator, cost_model, copies) for _ in range(32)]
    probes = [num for num in drafted if num]
    assert len(probes) == 4 and all(num <= 16 for num in probes)
    # the batch shrinks to one request: drafting starts again at once
    assert _step(speculator, cost_model, copies[:1]) > 0


def test_an_accepted_token_saves_the_base_only_as_far_as_the_whole_batch_drafts():
    assert token_value_s(CPU, 1, 1.0) == pytest.approx(CPU.plain_step_s(1))  # batch 1: the whole step
    assert token_value_s(CPU, 16, 1.0) == pytest.approx(CPU.plain_step_s(16) / 16)  # all draft: a decode's share
    assert token_value_s(CPU, 16, 2 / 16) == pytest.approx(CPU.per_decode_s + CPU.base_s / 128)


def _fitted_speculator(critical_path: bool = True) -> tuple[Speculator, OnlineStepCostModel]:
    speculator, cost_model = _speculator(critical_path=critical_path)
    for step in range(64):  # CPU-shaped decode steps at batch 1 and 16, with and without verifies
        num_decodes, num_verifies = (1, step % 2) if step < 32 else (16, step % 3)
        step_s = _measured_step_s(num_decodes, num_verifies, 4 * num_verifies)
        speculator.meter.record(num_decodes, num_verifies, 4 * num_verifies, step_s)
    return speculator, cost_model


def test_a_few_copies_in_a_large_batch_do_not_draft_but_a_whole_batch_of_them_does():
    speculator, _ = _fitted_speculator()
    copies = [_decoding(f"c{i}") for i in range(16)]
    plain = [_decoding(f"p{i}", copies=False) for i in range(14)]
    for request in copies:  # copies so far: 3 of 8 drafts accepted per verify (a1 ~1, c ~0.67)
        for _ in range(4):
            speculator.tracker.record(request.request_id, 8, 3)
    speculator.plan(copies[:2] + plain)  # 2 of 16 copy: an accepted token saves little more than a decode
    assert not any(request.num_draft_slots for request in copies[:2])
    speculator.plan(copies)  # every decode copies: the batch's steps fall, so its fixed cost is saved too
    assert all(request.num_draft_slots > 0 for request in copies)
    speculator.plan(copies[:1])  # batch 1: drafts
    assert copies[0].num_draft_slots > 0


def test_only_the_requests_with_the_most_output_left_save_the_step_s_fixed_cost():
    """A closed batch of 16 copies whose steps last until its last request is done (batch 16 on SmolLM2: n-gram
    emitted a third of the summarise tokens while the last prompt prefilled, then took as many steps as off):
    the requests ahead of the last one draft only where a decode's saving pays, the last one drafts long; the
    rule before (every decode's token alike) drafts every copy."""
    copies = [_decoding(f"c{i}") for i in range(16)]
    for request in copies[:15]:  # 300 output tokens ahead of the last one (max_tokens 400)
        request.output_token_ids.extend([7] * 300)
        request.num_computed_tokens = request.num_tokens - 1
    for preset in (True, False):
        speculator, _ = _fitted_speculator(critical_path=preset)
        for request in copies:  # copies so far: 3 of 8 drafts accepted per verify (a1 ~1, c ~0.67)
            for _ in range(4):
                speculator.tracker.record(request.request_id, 8, 3)
        speculator.plan(copies)
        drafting = [request.request_id for request in copies if request.num_draft_slots]
        assert drafting == (["c15"] if preset else [request.request_id for request in copies])
    assert critical_token_value_s(CPU, True, 1, 1) == pytest.approx(CPU.plain_step_s(1))  # alone: the whole step
    assert critical_token_value_s(CPU, False, 1, 1) == CPU.per_decode_s
    assert critical_token_value_s(CPU, True, 16, 16) == pytest.approx(token_value_s(CPU, 16, 1.0))  # all draft
    assert critical_token_value_s(CPU, True, 16, 15) == CPU.per_decode_s  # one holds the batch


def test_a_request_still_prefilling_holds_the_critical_path():
    speculator, _ = _fitted_speculator()
    copies = [_decoding(f"c{i}") for i in range(16)]
    for request in copies:
        for _ in range(4):
            speculator.tracker.record(request.request_id, 8, 3)
    speculator.plan(copies)
    assert all(request.num_draft_slots > 0 for request in copies)  # all alike: every decode drafts
    prefilling = make_decoding_request("p", list(range(2000, 2100)), [], max_tokens=400)
    prefilling.num_computed_tokens = 50
    speculator.plan(copies[:15] + [prefilling])  # its first token is a step away: no decode's token saves the base
    assert not any(request.num_draft_slots for request in copies[:15])


def test_on_cpu_a_step_is_timed_on_process_cpu_time_from_its_plan_to_its_end():
    cost_model = OnlineStepCostModel(UNDERPRICED)
    config = DraftCostConfig(min_steps_to_fit=1, refit_every_steps=1, clock=StepClock.PROCESS_CPU)
    meter = DraftCostMeter(cost_model, config)
    meter.settle()  # the plan of the coming step starts its clock
    meter.planned(4, 1, 3)
    started = time.process_time()
    while time.process_time() - started < 0.02:  # the step's work
        pass
    cost_model.observe(7, 0, 5.0)  # its wall time (a loaded machine) is not what the meter records
    meter.settle()
    (step,) = meter._classes[(4).bit_length()].steps
    assert step[:3] == (4, 1, 3) and 0.02 <= step[3] < 1.0
