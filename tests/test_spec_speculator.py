"""Speculator.plan/observe with n-gram drafts: a copy whose drafts pass drafts longer (two-rate model), and verifies of the
unigram fallback are counted in the stats but not judged by the per-request pause."""

from __future__ import annotations

from services.engine.request import Request
from services.engine.scheduler.cost_model import OnlineStepCostModel, StepCostCoefficients
from services.engine.scheduler.output import ScheduledChunk, SchedulerOutput
from services.engine.spec.adaptive_drafting import AdaptiveDraftingConfig
from services.engine.spec.draft_cost import num_drafts_worth
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.spec_config import SpeculativeConfig
from services.engine.spec.speculator import Speculator
from tests.engine_factories import make_decoding_request

STRICT = AdaptiveDraftingConfig(min_acceptance_rate=0.5, min_verifies=1, initial_backoff_steps=4)


def _decoding(request_id: str, prompt: list[int], output: list[int]) -> Request:
    return make_decoding_request(request_id, prompt, output, max_tokens=200)


def _speculator() -> Speculator:
    cost_model = OnlineStepCostModel(StepCostCoefficients(base_s=0.07, per_token_s=0.002, per_kv_token_s=0.0))
    return Speculator(SpeculativeConfig(SpeculativeMethod.NGRAM), cost_model, 4096, STRICT)


def _verify(speculator: Speculator, request: Request, num_accepted: int) -> None:
    drafts = request.num_draft_slots
    chunk = ScheduledChunk(request, drafts + 1, True, request.num_tokens + drafts, drafts)
    speculator.observe(SchedulerOutput([chunk]), {request.request_id: [0] * (num_accepted + 1)})


def test_a_unigram_fallback_that_fails_does_not_pause_the_request():
    speculator = _speculator()
    # "7" recurs, always followed by 1 (the vote), but no 2-token suffix recurs: unigram fallback
    request = _decoding("r", [7, 1, 5, 7, 1, 6, 7, 1, 8, 3], [7])
    speculator.plan([request])
    assert request.draft_token_ids == [1, 8] and request.num_draft_slots == 2
    _verify(speculator, request, 0)  # rejected: counted, not judged
    assert speculator.stats.snapshot().num_draft_tokens == 2
    assert speculator.tracker.acceptance_rate("r") is None and speculator.tracker.totals("r") == (0, 0)
    speculator.plan([request])
    assert request.num_draft_slots == 2  # not paused


def test_a_copy_drafts_longer_once_its_drafts_pass():
    speculator = _speculator()
    copy = list(range(100, 160))
    request = _decoding("c", copy + [1] + copy[:12], [copy[12]])  # a 13-token match: 2 x 13 > 16 allowed
    speculator.plan([request])
    # nothing measured: the prior (0.5 for the first draft and for each next one) gives k = 4 here
    assert request.draft_token_ids == copy[13:17]
    _verify(speculator, request, 4)  # all 4 accepted: the continuation estimate rises
    request.output_token_ids.extend(copy[13:18])
    request.num_computed_tokens = request.num_tokens - 1
    first, later = speculator.tracker.request_acceptance_models(["c"], speculator.tracker.batch_acceptance_model())
    assert later[0] > 0.75 and first[0] > 0.6
    speculator.plan([request])
    k = int(num_drafts_worth(speculator.meter.costs(1, request.num_tokens), 1, first, later, 16)[0])
    assert k >= 8 and request.draft_token_ids == copy[18 : 18 + k]  # longer than the prior's 4


def test_an_ngram_match_that_fails_is_judged():
    speculator = _speculator()
    request = _decoding("m", [5, 6, 9, 1, 2, 3, 5], [6])  # "5 6" recurs: n-gram drafts 9 1 2 3
    speculator.plan([request])
    assert request.draft_token_ids == [9, 1, 2, 3]
    _verify(speculator, request, 0)
    assert speculator.tracker.totals("m") == (4, 0)  # recorded (the fallback test: not even that)
    speculator.plan([request])
    assert request.num_draft_slots == 0  # judged after 1 verify (min_verifies 1): paused
