"""The scheduler's side of speculative decoding: draft slots in the token budget, verify results applied,
rejected drafts' KV blocks rolled back, finishes inside a verify, and the cost model's tokens per step."""

from __future__ import annotations

import pytest

from services.engine.request import FinishReason, RequestStatus
from services.engine.scheduler import SchedulerOutput
from tests.engine_factories import EOS, fake_model_outputs, make_request, make_scheduler


def _to_decode(scheduler, request):
    """Adds the request and runs its prefill step: it then decodes (one uncomputed token)."""
    scheduler.add(request)
    output = scheduler.schedule()
    scheduler.update(output, fake_model_outputs(output))
    assert request.num_uncomputed_tokens == 1


def _verify_outputs(output: SchedulerOutput, accepted: dict[str, int], next_token: int = 9):
    """What the runner would return: plain tokens, and for each verify chunk `accepted` of its drafts + 1."""
    tokens, verified = {}, {}
    for chunk in output.chunks:
        request_id = chunk.request.request_id
        if chunk.num_draft_tokens:
            taken = accepted[request_id]
            verified[request_id] = list(chunk.request.draft_token_ids[:taken]) + [next_token]
        elif chunk.samples_token:
            tokens[request_id] = 7
    return tokens, verified


def test_a_decode_with_drafts_gets_them_in_the_budget_and_kv_for_every_draft_position():
    scheduler = make_scheduler(block_size=4, token_budget=64)
    request = make_request("a", 6, max_tokens=32)
    _to_decode(scheduler, request)  # 7 tokens, 6 computed, 2 blocks
    request.num_draft_slots, request.draft_token_ids = 4, [20, 21, 22, 23]
    output = scheduler.schedule()
    (chunk,) = output.chunks
    assert (chunk.num_new_tokens, chunk.num_draft_tokens, chunk.num_context_tokens) == (5, 4, 11)
    assert len(scheduler.kv.block_table("a")) == 3  # positions 0..10


def test_drafts_use_only_the_budget_left_after_one_token_per_running_request():
    scheduler = make_scheduler(block_size=4, token_budget=6, max_num_seqs=4)
    requests = [make_request(name, 2, max_tokens=32) for name in "abc"]
    for request in requests:
        scheduler.add(request)
    output = scheduler.schedule()
    scheduler.update(output, fake_model_outputs(output))
    for request in requests:
        request.num_draft_slots, request.draft_token_ids = 4, [20, 21, 22, 23]
    output = scheduler.schedule()
    assert [chunk.num_draft_tokens for chunk in output.chunks] == [3, 0, 0]  # 6 - 3 spare tokens
    assert output.num_scheduled_tokens == 6


def test_rejected_drafts_step_back_and_free_their_blocks():
    scheduler = make_scheduler(block_size=4, num_blocks=16, token_budget=64)
    request = make_request("a", 6, max_tokens=32)
    _to_decode(scheduler, request)
    free_before = scheduler.kv.pool.num_free_blocks
    request.num_draft_slots, request.draft_token_ids = 6, [20, 21, 22, 23, 24, 25]
    output = scheduler.schedule()  # positions 6..12: blocks for 13 positions = 4
    assert scheduler.kv.pool.num_free_blocks == free_before - 2
    tokens, verified = _verify_outputs(output, {"a": 1})
    (result,) = scheduler.update(output, tokens, verified)
    assert result.new_token_ids == [20, 9]
    assert request.output_token_ids[-2:] == [20, 9]
    assert request.num_computed_tokens == 8 and request.num_tokens == 9  # the last token waits to be fed
    assert len(scheduler.kv.block_table("a")) == 2  # positions 0..7 only
    assert scheduler.kv.pool.num_free_blocks == free_before


def test_all_drafts_accepted_appends_k_plus_one_tokens():
    scheduler = make_scheduler(block_size=4, token_budget=64)
    request = make_request("a", 6, max_tokens=32)
    _to_decode(scheduler, request)
    request.num_draft_slots, request.draft_token_ids = 3, [20, 21, 22]
    output = scheduler.schedule()
    tokens, verified = _verify_outputs(output, {"a": 3})
    (result,) = scheduler.update(output, tokens, verified)
    assert result.new_token_ids == [20, 21, 22, 9]
    assert request.num_computed_tokens == 10 and request.num_tokens == 11


def test_eos_inside_accepted_drafts_finishes_there_and_frees_everything():
    scheduler = make_scheduler(block_size=4, num_blocks=16, token_budget=64)
    request = make_request("a", 6, max_tokens=32)
    _to_decode(scheduler, request)
    request.num_draft_slots, request.draft_token_ids = 3, [20, EOS, 22]
    output = scheduler.schedule()
    tokens, verified = _verify_outputs(output, {"a": 3})
    (result,) = scheduler.update(output, tokens, verified)
    assert result.new_token_ids == [20, EOS] and result.finish_reason is FinishReason.EOS
    assert request.status is RequestStatus.FINISHED
    assert scheduler.kv.pool.num_free_blocks == 16


def test_max_tokens_inside_a_verify_cuts_the_output():
    scheduler = make_scheduler(block_size=4, token_budget=64)
    request = make_request("a", 6, max_tokens=3)  # 1 token after prefill, 2 more allowed
    _to_decode(scheduler, request)
    request.num_draft_slots, request.draft_token_ids = 3, [20, 21, 22]
    output = scheduler.schedule()
    tokens, verified = _verify_outputs(output, {"a": 3})
    (result,) = scheduler.update(output, tokens, verified)
    assert result.new_token_ids == [20, 21] and result.finish_reason is FinishReason.LENGTH
    assert request.num_output_tokens == 3


def test_drafts_never_preempt_anyone_when_kv_is_short():
    scheduler = make_scheduler(block_size=4, num_blocks=2, token_budget=64)
    request = make_request("a", 6, max_tokens=32)
    _to_decode(scheduler, request)  # 2 blocks: positions 0..7, the pool is empty
    request.num_draft_slots, request.draft_token_ids = 4, [20, 21, 22, 23]
    output = scheduler.schedule()
    (chunk,) = output.chunks
    assert chunk.num_draft_tokens == 0 and chunk.num_new_tokens == 1
    assert not output.preempted_request_ids


def test_the_cost_model_counts_tokens_per_decode_step():
    scheduler = make_scheduler(block_size=4, token_budget=64)
    request = make_request("a", 6, max_tokens=64)
    _to_decode(scheduler, request)
    assert scheduler.cost_model.tokens_per_decode_step == 1.0
    for _ in range(25):  # 2 tokens per step: 50 of the 64
        request.num_draft_slots, request.draft_token_ids = 3, [20, 21, 22]
        output = scheduler.schedule()
        tokens, verified = _verify_outputs(output, {"a": 1})
        scheduler.update(output, tokens, verified)
    assert 1.6 < scheduler.cost_model.tokens_per_decode_step < 2.0  # an average moving towards 2 tokens per step


def test_decode_step_seconds_are_per_output_token_when_a_step_yields_more():
    from services.engine.scheduler import OnlineStepCostModel

    cost_model = OnlineStepCostModel(refit_every=1, min_steps_to_fit=1, window=1)
    cost_model.observe(10, 100, 0.100)
    assert cost_model.decode_step_s == cost_model.mean_step_s  # one token per step: the step time itself
    for _ in range(200):
        cost_model.observe_decode_yield(4, 8)  # 2 tokens per sampling request per step
    cost_model.observe(10, 100, cost_model.mean_step_s)  # a refit publishes the new rate
    assert cost_model.tokens_per_decode_step == pytest.approx(2.0, rel=1e-3)
    assert cost_model.decode_step_s == pytest.approx(cost_model.mean_step_s / 2, rel=1e-3)
