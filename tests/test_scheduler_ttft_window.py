"""TTFT-slack promotion (waiting_queue.py, speculative_policy.py): the queue's two re-key events, and the
worst-case wait bound with the rule on."""

import math

import pytest

from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.scheduler.displacement import PROMOTED_BASE
from services.engine.scheduler.speculative_policy import AlisePolicy
from services.engine.scheduler.waiting_queue import URGENT_BASE, TtftWindow, WaitingQueue
from tests.engine_factories import FakeClock, make_request, run_short_overload

STEP_S = 0.01
WINDOW = TtftWindow(1.0, 0.5)


def _queue(window=WINDOW):
    """A queue whose policy key is the request's predicted length (smaller first), promotion as the scheduler's."""

    def key(request):
        if request.promoted_at_s is not None:
            return PROMOTED_BASE + request.promoted_at_s
        return request.predicted_output_tokens

    return WaitingQueue(key, window)


def _ids(queue):
    return [r.request_id for r in queue]


def _waiting(request_id, predicted, arrival_s):
    request = make_request(request_id, 4, max_tokens=1000, arrival_time_s=arrival_s)
    request.predicted_output_tokens = predicted
    return request


def test_a_request_is_urgent_from_lead_before_its_target_until_the_target_then_back_in_policy_order():
    queue = _queue()
    queue.add(_waiting("long", 500.0, 0.0), 0.0)
    queue.add(_waiting("short", 10.0, 0.2), 0.2)
    queue.update_urgency(0.49)
    assert _ids(queue) == ["short", "long"]  # policy order: not yet within 0.5 s of the 1 s target
    queue.update_urgency(0.5)
    assert _ids(queue) == ["long", "short"] and queue.is_urgent(queue.head(1)[0])
    assert queue.head(1)[0].rank_key == URGENT_BASE + 1.0  # ranked by its TTFT deadline
    queue.update_urgency(0.71)  # both urgent: earliest deadline first
    assert _ids(queue) == ["long", "short"] and all(queue.is_urgent(r) for r in queue)
    queue.update_urgency(1.0)  # long missed its target: back to its policy key, behind the urgent one
    assert _ids(queue) == ["short", "long"]
    assert not queue.is_urgent(queue.head(2)[1]) and queue.head(2)[1].rank_key == 500.0
    queue.update_urgency(5.0)
    assert [r.rank_key for r in queue] == [10.0, 500.0]


def test_only_requests_without_a_first_token_and_not_yet_late_become_urgent():
    queue = _queue()
    resumed = _waiting("resumed", 500.0, 0.0)  # preempted after its first token: TTFT is settled
    resumed.first_token_time_s = 0.1
    queue.add(resumed, 0.3)
    late = _waiting("late", 400.0, 0.0)  # re-queued (preempted in prefill) after its deadline
    queue.add(late, 1.2)
    queue.add(_waiting("short", 10.0, 1.2), 1.2)
    queue.update_urgency(1.3)
    assert _ids(queue) == ["short", "late", "resumed"] and not any(queue.is_urgent(r) for r in queue)


def test_admission_removal_promotion_and_rerank_keep_the_queue_consistent():
    queue = _queue()
    for index in range(4):
        queue.add(_waiting(f"r{index}", 100.0 - index, 0.1 * index), 0.1 * index)
    queue.update_urgency(0.65)  # r0, r1 urgent
    assert _ids(queue) == ["r0", "r1", "r3", "r2"]
    queue.pop_head(1)  # r0 admitted
    queue.remove(queue.head(1)[0])  # r1 aborted
    starved = queue.promote_starved(0.7, max_wait_s=0.45)  # r2 waited 0.5 s: promoted, ahead of urgent ones
    assert _ids(starved) == ["r2"]
    queue.update_urgency(0.81)  # r3 urgent now; its deadline 1.3
    assert _ids(queue) == ["r2", "r3"] and queue.is_urgent(queue.head(2)[1])
    queue.rerank()  # the cost model changed: urgent keys are deadlines, not policy keys
    assert [r.rank_key for r in queue] == pytest.approx([PROMOTED_BASE + 0.7, URGENT_BASE + 1.3])
    queue.update_urgency(2.0)  # the admitted, removed and promoted ones left no entries that act later
    assert [r.rank_key for r in queue] == [PROMOTED_BASE + 0.7, 97.0]
    with pytest.raises(ValueError):
        queue.remove(_waiting("stranger", 1.0, 0.0))


def test_the_window_is_validated_and_the_policy_builds_it():
    with pytest.raises(ValueError):
        TtftWindow(1.0, 0.0)
    with pytest.raises(ValueError):
        TtftWindow(1.0, 1.5)
    with pytest.raises(ValueError):
        TtftWindow(math.inf, 0.5)
    assert AlisePolicy(OnlineStepCostModel()).ttft_window == TtftWindow(1.0, 0.25)
    assert AlisePolicy(OnlineStepCostModel(), ttft_target_s=0.2).ttft_window == TtftWindow(0.2, 0.2)  # lead capped
    assert AlisePolicy(OnlineStepCostModel(), ttft_target_s=math.inf).ttft_window is None
    assert _queue(None).ttft_window is None


def _scheduler(clock, *, target_s, lead_s, max_wait_s, horizon_s=math.inf, max_num_seqs=2):
    from services.engine.block_pool import KvBlockManager
    from services.engine.scheduler import Scheduler, SchedulerLimits
    from tests.engine_factories import EOS, TEST_COSTS

    cost_model = OnlineStepCostModel(TEST_COSTS)
    policy = AlisePolicy(cost_model, aging_horizon_s=horizon_s, ttft_target_s=target_s, ttft_lead_s=lead_s)
    limits = SchedulerLimits(max_num_seqs, 64, 256, max_wait_s)
    return Scheduler(policy, limits, KvBlockManager(256, 4), eos_token_id=EOS, clock=clock, cost_model=cost_model)


def test_a_long_job_is_promoted_in_its_window_and_starts_before_its_target():
    clock = FakeClock()
    scheduler = _scheduler(clock, target_s=0.3, lead_s=0.1, max_wait_s=math.inf)
    started_at, overtaken_by = run_short_overload(scheduler, clock, 60, STEP_S)
    assert started_at is not None and 0.2 - 1e-9 <= started_at < 0.3  # shortest first until 0.2 s, then urgent


def test_worst_case_wait_with_the_rule_on_overtaken_only_within_the_horizon_or_by_urgent_requests():
    """speculative_policy.py's bound with TTFT-slack promotion: a request is overtaken only by requests that
    entered the queue within its aging horizon H or that were urgent (arrived target - lead to target before
    overtaking it), and it starts within max_wait_s (promotion ranks ahead of urgent requests). The long job
    here is past its own TTFT target when queued (a lost cause: never urgent), and the urgent shorts alone
    are 2x what the seats serve, so only the promotion starts it."""
    clock = FakeClock()
    target_s, lead_s, horizon_s, max_wait_s = 0.1, 0.08, 0.1, 0.8
    scheduler = _scheduler(clock, target_s=target_s, lead_s=lead_s, max_wait_s=max_wait_s, horizon_s=horizon_s)
    started_at, overtaken_by = run_short_overload(scheduler, clock, 150, STEP_S, long_arrival_s=-1.0)
    assert started_at is not None and max_wait_s - STEP_S <= started_at <= max_wait_s + STEP_S
    late = [(now_s, arrival_s) for now_s, arrival_s in overtaken_by if arrival_s >= horizon_s]
    assert late  # the case the bound's second clause covers happens here
    assert all(target_s - lead_s - 1e-9 <= now_s - arrival_s < target_s for now_s, arrival_s in late)


def test_the_engines_ttft_target_reaches_the_policy() -> None:
    """--ttft-target-s sets the rule's target on alise and srpt-oracle (inf: off), leaves other policies
    alone and keeps the policy's other settings; a target <= 0 is refused by the engine's config."""
    import dataclasses

    from services.engine.config import EngineConfig
    from services.engine.scheduler import make_policy
    from services.engine.scheduler.speculative_policy import with_ttft_target

    for name in ("alise", "srpt-oracle"):
        policy = with_ttft_target(make_policy(name), 2.0)
        assert policy.name == name and policy.ttft_window is not None
        assert (policy.ttft_window.target_s, policy.ttft_window.lead_s) == (2.0, 0.25)
        assert with_ttft_target(make_policy(name), math.inf).ttft_window is None
        assert with_ttft_target(make_policy(name), 0.1).ttft_window.lead_s == 0.1  # the lead fits the target
    fcfs = make_policy("fcfs")
    assert with_ttft_target(fcfs, 2.0) is fcfs
    config = EngineConfig()
    assert config.ttft_target_s == 1.0
    with pytest.raises(ValueError, match="ttft_target_s"):
        dataclasses.replace(config, ttft_target_s=0.0)
