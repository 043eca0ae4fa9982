"""FCFS continuous batching: token budget, chunked prefill, admission order, preemption, abort."""

import pytest

from services.engine.request import FinishReason, RequestStatus
from services.engine.scheduler import SchedulerLimits, make_policy
from services.engine.scheduler.preemption import PreemptionCause
from tests.engine_factories import make_request, make_scheduler, run_step


def test_prefill_then_one_token_per_step_until_max_tokens():
    scheduler = make_scheduler()
    scheduler.add(make_request("a", num_prompt_tokens=5, max_tokens=3))
    output, results = run_step(scheduler)
    assert [(c.request.request_id, c.num_new_tokens, c.samples_token) for c in output.chunks] == [("a", 5, True)]
    assert results[0].new_token_ids == [7] and results[0].finish_reason is None
    output, _ = run_step(scheduler)
    assert output.chunks[0].num_new_tokens == 1  # a decode feeds back only the last sampled token
    _, results = run_step(scheduler)
    assert results[0].finish_reason is FinishReason.LENGTH
    assert not scheduler.has_work and scheduler.kv.pool.num_free_blocks == 64


def test_eos_finishes_unless_ignore_eos():
    scheduler = make_scheduler()
    scheduler.add(make_request("a", 3, max_tokens=10))
    _, results = run_step(scheduler, token_id=2)
    assert results[0].finish_reason is FinishReason.EOS


def test_long_prompt_is_chunked_under_the_token_budget_without_stalling_decodes():
    scheduler = make_scheduler(token_budget=8)
    scheduler.add(make_request("short", 3, max_tokens=20))
    run_step(scheduler)  # short: prefill done
    scheduler.add(make_request("long", 20, max_tokens=5))
    fed = []
    for _ in range(3):
        output, _ = run_step(scheduler)
        assert output.num_scheduled_tokens <= 8
        fed.append({c.request.request_id: c.num_new_tokens for c in output.chunks})
    assert fed == [{"short": 1, "long": 7}, {"short": 1, "long": 7}, {"short": 1, "long": 6}]
    assert scheduler.requests["long"].num_output_tokens == 1  # the last chunk sampled a token


def test_fcfs_admits_in_arrival_order_and_respects_max_num_seqs():
    scheduler = make_scheduler(max_num_seqs=2)
    for name in ("first", "second", "third"):
        scheduler.add(make_request(name, 2))
    output, _ = run_step(scheduler)
    assert [c.request.request_id for c in output.chunks] == ["first", "second"]
    assert [r.request_id for r in scheduler.waiting] == ["third"]


def test_kv_shortage_preempts_the_newest_running_request_and_it_resumes_later():
    # 4 blocks of 4 tokens: two requests of 8 prompt tokens take 2 blocks each; the first decode
    # (position 8) needs a fifth block, so the newest is preempted.
    scheduler = make_scheduler(num_blocks=4, block_size=4)
    scheduler.add(make_request("old", 8, max_tokens=6))
    scheduler.add(make_request("new", 8, max_tokens=6))
    run_step(scheduler)
    output, _ = run_step(scheduler)
    assert output.preempted_request_ids == ["new"]
    assert scheduler.num_preemptions_by_cause == {PreemptionCause.KV_SHORTAGE: 1, PreemptionCause.DISPLACEMENT: 0}
    new = scheduler.requests["new"]
    assert new.status is RequestStatus.PREEMPTED and new.num_computed_tokens == 0
    assert new.num_output_tokens == 1  # output survives a recompute preemption
    assert scheduler.kv.block_table("new") == []
    while scheduler.requests.get("old"):
        run_step(scheduler)
    output, _ = run_step(scheduler)
    assert [c.request.request_id for c in output.chunks] == ["new"]
    assert output.chunks[0].num_new_tokens == 9  # prompt + its one output token recomputed
    assert new.num_preemptions == 1


def test_abort_frees_blocks_in_every_state():
    scheduler = make_scheduler(max_num_seqs=1)
    scheduler.add(make_request("running", 9))
    scheduler.add(make_request("waiting", 4))
    run_step(scheduler)
    assert scheduler.kv.pool.num_used_blocks == 3
    assert scheduler.abort("running").finish_reason is FinishReason.ABORTED
    assert scheduler.abort("waiting").status is RequestStatus.FINISHED
    assert scheduler.abort("unknown") is None
    assert scheduler.kv.pool.num_free_blocks == 64 and not scheduler.has_work


def test_abort_during_a_step_drops_its_result():
    scheduler = make_scheduler()
    scheduler.add(make_request("a", 4))
    output = scheduler.schedule()
    scheduler.abort("a")
    assert scheduler.update(output, {"a": 7}) == []


def test_context_limit_finishes_with_length():
    scheduler = make_scheduler(max_model_len=6)
    scheduler.add(make_request("a", 5, max_tokens=50))
    _, results = run_step(scheduler)
    assert results[0].finish_reason is FinishReason.LENGTH


def test_duplicate_request_id_is_rejected():
    scheduler = make_scheduler()
    scheduler.add(make_request("a", 4))
    with pytest.raises(ValueError, match="already live"):
        scheduler.add(make_request("a", 4))


def test_limits_and_policy_names_are_validated():
    with pytest.raises(ValueError, match="max_num_seqs"):
        SchedulerLimits(0, 8, 8)
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        make_policy("lifo")
