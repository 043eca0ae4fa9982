"""The speculative policy and its references: order, re-estimation, aging bound, hysteresis, budget."""

import math

import pytest

from services.engine.request import RequestStatus
from services.engine.scheduler import POLICY_NAMES
from services.engine.scheduler.preemption import PreemptionCause
from tests.engine_factories import (
    FakeClock,
    make_predicted_request,
    make_request,
    make_scheduler,
    run_short_overload,
    run_step,
)

STEP_S = 0.01


def _ids(requests):
    return [r.request_id for r in requests]


def test_alise_admits_the_shortest_predicted_job_first():
    scheduler = make_scheduler(policy="alise", max_num_seqs=1)
    scheduler.add(make_predicted_request("long", 4, max_tokens=200, predicted_tokens=150))
    scheduler.add(make_predicted_request("short", 4, max_tokens=200, predicted_tokens=10))
    scheduler.add(make_predicted_request("medium", 4, max_tokens=200, predicted_tokens=60))
    output, _ = run_step(scheduler)
    assert _ids(c.request for c in output.chunks) == ["short"]
    assert _ids(scheduler.waiting) == ["medium", "long"]


def test_fcfs_keeps_arrival_order_whatever_the_prediction():
    scheduler = make_scheduler(policy="fcfs", max_num_seqs=1)
    scheduler.add(make_predicted_request("long", 4, max_tokens=200, predicted_tokens=150))
    scheduler.add(make_predicted_request("short", 4, max_tokens=200, predicted_tokens=10))
    output, _ = run_step(scheduler)
    assert _ids(c.request for c in output.chunks) == ["long"]


def test_srpt_oracle_ranks_by_the_true_remaining_length():
    scheduler = make_scheduler(policy="srpt-oracle", max_num_seqs=1)
    # predictions say the opposite of the truth (max_tokens is the truth under the benchmark method)
    scheduler.add(make_predicted_request("truly-long", 4, max_tokens=100, predicted_tokens=5))
    scheduler.add(make_predicted_request("truly-short", 4, max_tokens=8, predicted_tokens=90))
    output, _ = run_step(scheduler)
    assert _ids(c.request for c in output.chunks) == ["truly-short"]


def test_a_short_arrival_displaces_a_clearly_longer_running_job():
    scheduler = make_scheduler(policy="alise", max_num_seqs=1)
    scheduler.add(make_predicted_request("long", 4, max_tokens=400, predicted_tokens=300))
    run_step(scheduler)
    scheduler.add(make_predicted_request("short", 4, max_tokens=400, predicted_tokens=10))
    output, _ = run_step(scheduler)
    assert output.preempted_request_ids == ["long"]
    assert scheduler.num_preemptions_by_cause == {PreemptionCause.KV_SHORTAGE: 0, PreemptionCause.DISPLACEMENT: 1}
    assert _ids(c.request for c in output.chunks) == ["short"]
    long = scheduler.requests["long"]
    assert long.status is RequestStatus.PREEMPTED and scheduler.kv.block_table("long") == []


def test_hysteresis_a_slightly_shorter_arrival_does_not_displace():
    scheduler = make_scheduler(policy="alise", max_num_seqs=1)
    scheduler.add(make_predicted_request("running", 4, max_tokens=400, predicted_tokens=100))
    run_step(scheduler)
    scheduler.add(make_predicted_request("similar", 4, max_tokens=400, predicted_tokens=90))
    output, _ = run_step(scheduler)
    assert output.preempted_request_ids == []
    assert _ids(c.request for c in output.chunks) == ["running"]


def test_no_thrash_between_two_similar_jobs():
    scheduler = make_scheduler(policy="alise", max_num_seqs=1)
    scheduler.add(make_predicted_request("a", 4, max_tokens=120, predicted_tokens=100))
    scheduler.add(make_predicted_request("b", 4, max_tokens=120, predicted_tokens=100))
    for _ in range(150):
        run_step(scheduler)
    assert scheduler.num_preemptions <= 1


def test_a_job_that_outlives_its_prediction_is_re_estimated_and_becomes_displaceable():
    scheduler = make_scheduler(policy="alise", max_num_seqs=1, max_model_len=1024, num_blocks=512)
    scheduler.add(make_predicted_request("optimistic", 4, max_tokens=900, predicted_tokens=10))
    job = scheduler.requests["optimistic"]
    estimates = {}
    for _ in range(40):  # produces 40 tokens: well beyond its p90 of 20
        run_step(scheduler)
        estimates[job.num_output_tokens] = job.predicted_remaining_tokens
    assert estimates[40] > estimates[30] > estimates[20] >= 1.0  # it grows instead of reaching "done"
    scheduler.add(make_predicted_request("fresh", 4, max_tokens=900, predicted_tokens=20))
    displaced = False
    for _ in range(400):
        output, _ = run_step(scheduler)
        displaced = displaced or "optimistic" in output.preempted_request_ids
        if displaced:
            break
    assert displaced  # a stale estimate does not pin it ahead of fresh short work forever


def test_aging_bound_a_long_job_starts_within_max_wait_among_endless_short_ones():
    clock = FakeClock()
    max_wait_s = 0.5
    scheduler = make_scheduler(policy="alise", max_num_seqs=2, max_wait_s=max_wait_s, clock=clock, num_blocks=256)
    scheduler.add(make_predicted_request("long", 4, max_tokens=50, predicted_tokens=40))
    started_at = None
    for step in range(200):  # two short arrivals per step: more than two seats can serve
        for index in range(2):
            scheduler.add(make_predicted_request(f"short{step}-{index}", 4, max_tokens=2, predicted_tokens=2))
        output, _ = run_step(scheduler)
        if started_at is None and any(c.request.request_id == "long" for c in output.chunks):
            started_at = clock.now_s
        clock.now_s += STEP_S
    assert started_at is not None and started_at <= max_wait_s + STEP_S


def test_without_the_aging_bound_the_long_job_starves():
    from services.engine.scheduler.speculative_policy import AlisePolicy

    clock = FakeClock()
    scheduler = make_scheduler(policy="alise", max_num_seqs=2, max_wait_s=math.inf, clock=clock, num_blocks=256)
    scheduler.policy = AlisePolicy(scheduler.cost_model, aging_horizon_s=math.inf)  # no TTFT aging either
    scheduler.add(make_predicted_request("long", 4, max_tokens=50, predicted_tokens=40))
    for step in range(200):
        for index in range(2):
            scheduler.add(make_predicted_request(f"short{step}-{index}", 4, max_tokens=2, predicted_tokens=2))
        output, _ = run_step(scheduler)
        assert all(c.request.request_id != "long" for c in output.chunks)
        clock.now_s += STEP_S


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_token_budget_holds_and_decodes_never_stall_behind_a_long_prompt(policy):
    scheduler = make_scheduler(policy=policy, token_budget=8, num_blocks=256)
    for name in ("d1", "d2", "d3"):
        scheduler.add(make_predicted_request(name, 2, max_tokens=40, predicted_tokens=30))
    run_step(scheduler)  # three short prompts prefilled
    scheduler.add(make_predicted_request("big-prompt", 60, max_tokens=3, predicted_tokens=2))
    for _ in range(12):
        output, _ = run_step(scheduler)
        fed = {c.request.request_id: c.num_new_tokens for c in output.chunks}
        assert output.num_scheduled_tokens <= 8
        assert all(fed.get(name) == 1 for name in ("d1", "d2", "d3"))  # every running decode, every step


def test_mlfq_skip_join_and_demotion():
    scheduler = make_scheduler(policy="mlfq", num_blocks=1024, max_model_len=2048, token_budget=2048)
    policy = scheduler.policy
    short_prompt = make_request("short-prompt", 4, max_tokens=500)
    long_prompt = make_request("long-prompt", 1500, max_tokens=10)
    assert policy.level(short_prompt) == 0
    assert policy.level(long_prompt) > 0  # its first iteration is longer than the top quantum
    short_prompt.output_token_ids.extend([7] * 8)  # used the top queue's 8-step quantum
    assert policy.level(short_prompt) == 1


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_request_finishes_and_frees_its_blocks(policy):
    scheduler = make_scheduler(policy=policy, num_blocks=24, block_size=4, max_num_seqs=4)
    for index in range(12):
        scheduler.add(
            make_predicted_request(f"r{index}", 5 + index % 4, max_tokens=6 + 3 * (index % 5), predicted_tokens=8)
        )
    for _ in range(2000):
        if not scheduler.has_work:
            break
        run_step(scheduler)
    assert not scheduler.has_work and scheduler.kv.pool.num_free_blocks == 24


def test_ttft_aging_a_long_job_is_overtaken_only_by_requests_that_came_within_its_horizon():
    """The worst-case wait bound of speculative_policy.py: with horizon H (and no promotion), a request
    that started waiting at t0 is overtaken only by requests that entered the queue before t0 + H,
    so it starts once those are served, even under endless shorter arrivals (2x overload here)."""
    from services.engine.scheduler.speculative_policy import AlisePolicy

    clock = FakeClock()
    horizon_s = 0.3
    scheduler = make_scheduler(policy="alise", max_num_seqs=2, max_wait_s=math.inf, clock=clock, num_blocks=256)
    scheduler.policy = AlisePolicy(scheduler.cost_model, aging_horizon_s=horizon_s)
    started_at, started_before = run_short_overload(scheduler, clock, 200, STEP_S)  # as in the promotion test above
    overtaken_by = [arrival_s for _, arrival_s in started_before]
    assert started_at is not None  # without aging it starves (test_without_the_aging_bound_the_long_job_starves)
    assert max(overtaken_by) < horizon_s  # shortest-first within the horizon, never past it
    assert started_at > horizon_s  # and shortest-first, not FCFS, until then


def test_ttft_aging_keys_are_deadlines_on_waiting_requests_only():
    from services.engine.scheduler.cost_model import OnlineStepCostModel
    from services.engine.scheduler.speculative_policy import AlisePolicy

    policy = AlisePolicy(OnlineStepCostModel(), aging_horizon_s=2.0)
    short = make_predicted_request("short", 4, max_tokens=8, predicted_tokens=2)
    long = make_predicted_request("long", 4, max_tokens=4000, predicted_tokens=3000)
    short.wait_started_s, long.wait_started_s = 5.0, 3.0
    assert policy.priority_key(short) == pytest.approx(5.0 + policy.remaining_s(short))
    assert policy.priority_key(long) == pytest.approx(3.0 + 2.0)  # capped at the horizon
    assert policy.priority_keys([short, long]) == pytest.approx([policy.remaining_s(short), policy.remaining_s(long)])
    assert AlisePolicy(OnlineStepCostModel(), aging_horizon_s=math.inf).priority_key(long) == pytest.approx(
        policy.remaining_s(long)
    )
    assert AlisePolicy(OnlineStepCostModel()).aging_horizon_s == 30.0
    with pytest.raises(ValueError):
        AlisePolicy(OnlineStepCostModel(), aging_horizon_s=0.0)


def test_the_victim_rank_counts_the_recompute_a_preemption_would_waste():
    from services.engine.scheduler.cost_model import OnlineStepCostModel
    from services.engine.scheduler.speculative_policy import RECOMPUTE_WASTE_WEIGHT, AlisePolicy, SrptOraclePolicy

    cost_model = OnlineStepCostModel()
    for policy in (AlisePolicy(cost_model), SrptOraclePolicy(cost_model)):
        fresh = make_predicted_request("fresh", 8, max_tokens=400, predicted_tokens=300)
        deep = make_predicted_request("deep", 200, max_tokens=400, predicted_tokens=320)
        deep.num_computed_tokens = 200  # its whole prompt is in KV: evicting it recomputes 200 tokens
        batch = [fresh, deep]
        keys = policy.priority_keys(batch)
        waste_s = RECOMPUTE_WASTE_WEIGHT * len(batch) * cost_model.prefill_s_per_token * 200
        assert keys[1] == pytest.approx(max(0.0, policy.remaining_s(deep) - waste_s))
        assert keys[0] == pytest.approx(policy.remaining_s(fresh))
        assert policy.remaining_s(deep) > policy.remaining_s(fresh) or policy.name == "srpt-oracle"
        assert keys[0] > keys[1]  # the fresh request is the first victim, though it has less work left
        assert min(keys) >= 0.0  # ranks stay above the promoted ones (policy.py)


@pytest.mark.parametrize("num_backlog, displaced", [(1, True), (5, False)])
def test_a_displacement_never_sends_its_victim_behind_a_backlog(num_backlog, displaced):
    # One seat. The victim (~44 tokens predicted) is clearly longer than each waiting request (~22):
    # with one waiting, it resumes after ~22 steps, within its allowance of one decode step per
    # output token (~45); behind five it would wait ~110 steps mid-output, so it keeps its seat.
    from services.engine.scheduler.displacement import MAX_DEFERRAL_STEPS_PER_TOKEN

    assert MAX_DEFERRAL_STEPS_PER_TOKEN == 1.0  # the figures above
    scheduler = make_scheduler(policy="alise", max_num_seqs=1, num_blocks=128)
    scheduler.add(make_predicted_request("victim", 4, max_tokens=400, predicted_tokens=40))
    run_step(scheduler)
    for index in range(num_backlog):
        scheduler.add(make_predicted_request(f"waiting-{index}", 4, max_tokens=400, predicted_tokens=20))
    output, _ = run_step(scheduler)
    assert output.preempted_request_ids == (["victim"] if displaced else [])
    assert _ids(c.request for c in output.chunks) == (["waiting-0"] if displaced else ["victim"])
