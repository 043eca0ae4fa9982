"""The bookkeeping behind the reliability behaviours, without servers: restart budget, the gateway's
in-flight limit, the engine's admission (caps and predicted completion) and the memory ledger's
expiry of silent engines."""

from __future__ import annotations

import dataclasses
import itertools

import grpc
import pytest

from services.cli.restart_policy import RestartBudget, RestartSettings
from services.cli.stack_plan import ChildSpec, with_port
from services.common.errors import Overloaded
from services.common.refusal import RefusalReason
from services.engine.admission_control import AdmissionControl, AdmissionLimits, QueueProfile
from services.engine.admission_inflow import AdmittedInflow
from services.engine.drain_rate import DrainRate
from services.engine.engine_core import StepTiming
from services.gateway.admission import InFlightLimit
from services.gateway.engine_client import EngineClient, EngineQueueFull
from services.gateway.engine_load import ReplicaLoadTracker
from services.gateway.engine_saturation import QueueFullMemory, queued_steps_reason, queued_work_reason
from services.memory.ledger import EngineRegistration, KvBlockLayout, KvDtype, KvLedger


def test_restart_backoff_doubles_and_repeated_deaths_in_the_window_give_up():
    budget = RestartBudget(RestartSettings(max_restarts=3, window_s=10.0, initial_backoff_s=0.5, max_backoff_s=1.5))
    assert [budget.on_death("engine", t) for t in (0.0, 1.0, 2.0)] == [0.5, 1.0, 1.5]
    assert budget.on_death("engine", 3.0) is None  # a 4th death within 10 s
    assert budget.on_death("predictor", 3.0) == 0.5  # counted per child
    assert budget.on_death("engine", 20.0) == 0.5  # the old deaths left the window


def test_a_restarted_child_keeps_its_port():
    spec = ChildSpec("engine", ("python", "-m", "services.engine", "--port", "0", "--x"), (("--memory-address", "m"),))
    assert with_port(spec, 41234).argv == ("python", "-m", "services.engine", "--port", "41234", "--x")


def test_in_flight_limit_rejects_at_once_and_gives_places_back_on_any_exit():
    limit = InFlightLimit(2)
    with limit.admit(), limit.admit():
        with pytest.raises(Overloaded, match="2 requests in flight, the limit is 2") as refused:
            with limit.admit():
                pass
        assert refused.value.refusal_reason == RefusalReason.QUEUE_FULL
    with pytest.raises(RuntimeError):
        with limit.admit():
            raise RuntimeError("a failed generation")
    assert limit.num_in_flight == 0 and limit.num_rejected == 1


def _profile(
    remaining: list[float], *, shortest_first: bool = True, s_per_token: float = 0.01, horizon_s: float = 30.0
) -> QueueProfile:
    remaining = sorted(remaining)
    return QueueProfile(
        tuple(remaining),
        tuple(itertools.accumulate(remaining)),
        shortest_first,
        s_per_token,
        decode_step_s=0.05,
        prefill_s_per_token=0.0,
        taken_at_s=0.0,
        overtake_horizon_s=horizon_s,
    )


def test_predicted_finish_counts_only_the_work_ranked_ahead():
    profile = _profile([10.0, 20.0, 1000.0, 2000.0])
    ahead_s, own_s = profile.predicted_finish_s(own_tokens=50.0, num_prompt_tokens=0)
    assert own_s == pytest.approx(50 * 0.05)  # its own decode, one token per step
    assert ahead_s == pytest.approx(0.0)  # 30 tokens ahead + 50 own at 0.01 s/token < 2.5 s own
    fcfs = _profile([10.0, 20.0, 1000.0, 2000.0], shortest_first=False)
    ahead_s, own_s = fcfs.predicted_finish_s(own_tokens=50.0, num_prompt_tokens=0)
    assert ahead_s + own_s == pytest.approx((3030 + 50) * 0.01)  # everything queued is ahead
    assert _profile([], s_per_token=0.0).predicted_finish_s(50.0, 0) is None  # nothing measured yet


def test_admission_caps_requests_and_prompt_tokens_and_refuses_hopeless_deadlines():
    control = AdmissionControl(AdmissionLimits(max_live_requests=2, max_live_prompt_tokens=100, deadline_slack=1.0))
    empty = _profile([], s_per_token=0.0)
    control.admit("a", 60, 10.0, None, empty)
    with pytest.raises(Overloaded, match="prompt tokens queued"):
        control.admit("b", 50, 10.0, None, empty)
    control.admit("b", 40, 10.0, None, empty)
    with pytest.raises(Overloaded, match="2 live requests"):
        control.admit("c", 1, 10.0, None, empty)
    control.release("a")
    control.release("a")  # idempotent
    assert control.num_live == 1 and control.num_live_prompt_tokens == 40
    busy = _profile([100.0] * 50, shortest_first=False)  # 5,000 tokens ahead at 0.01 s: 50 s
    with pytest.raises(Overloaded, match="deadline cannot be met"):
        control.admit("d", 10, 10.0, 5.0, busy)
    control.admit("e", 10, 10.0, 60.0, busy)  # 50.1 s of work fits a 60 s deadline


def test_shorter_work_arriving_while_a_request_waits_counts_against_its_deadline():
    """The soak's minute-23 case: a request whose queue ahead fits its deadline now, while shorter work
    keeps arriving faster than the engine drains it, is refused at once (it would starve behind the
    newcomers until the policy's aging horizon); the same inflow of longer work, or under fcfs, is not
    ahead of it and leaves it admitted."""
    now = [0.0]
    limits = AdmissionLimits(max_live_requests=10_000, max_live_prompt_tokens=10**9, deadline_slack=1.0)
    queue = _profile([20.0] * 5)  # 100 tokens ahead: 2.5 s with its own 50 (one token per 0.05 s step)
    for predicted_tokens, policy_fcfs, admitted in ((30.0, False, False), (100.0, False, True), (30.0, True, True)):
        control = AdmissionControl(limits, clock=lambda: now[0])
        now[0] = 0.0
        control.admit("first", 4, predicted_tokens, 20.0, queue)  # the first window: no arrival term yet
        for index in range(300):  # 9,000 predicted tokens in 60 s: 150 tokens/s = 1.5 s of work per s
            now[0] = 0.5 + index * 0.2
            control.admit(f"r{index}", 4, predicted_tokens, None, queue)
        profile = _profile([20.0] * 5, shortest_first=not policy_fcfs)
        if admitted:
            control.admit("probe", 4, 50.0, 20.0, profile)
            continue
        with pytest.raises(Overloaded, match="shorter work arriving meanwhile") as refused:
            control.admit("probe", 4, 50.0, 20.0, profile)  # 2.5 s + 1.5 x the 30 s horizon = 47.5 s > 20 s
        assert refused.value.refusal_reason == RefusalReason.DEADLINE_UNMEETABLE
        assert "predicted completion in 47.50 s" in str(refused.value)
    now[0] += 61.0  # the inflow has left the window: admitted again
    control.admit("later", 4, 50.0, 20.0, _profile([20.0] * 5))


def test_with_nothing_ranked_ahead_the_inflow_of_the_last_minute_refuses_nothing():
    """After a 20x burst an idle engine refused 32-token requests with 60 s deadlines for the rest of the
    minute: the burst's admissions read as shorter work still arriving, though all of it had been served."""
    now = [0.0]
    limits = AdmissionLimits(max_live_requests=10_000, max_live_prompt_tokens=10**9, deadline_slack=1.0)
    control = AdmissionControl(limits, clock=lambda: now[0])
    for index in range(600):  # 19,200 tokens in 60 s: 320 tokens/s = 3.2 s of work per s at 0.01 s per token
        now[0] = index * 0.1
        control.admit(f"r{index}", 4, 32.0, None, _profile([]))
    now[0] = 61.0  # the burst is over and served: nothing live
    control.admit("after", 4, 32.0, 60.0, _profile([]))  # 1.6 s of its own work fits 60 s
    with pytest.raises(Overloaded, match="shorter work arriving meanwhile"):  # with shorter work queued: counted
        control.admit("behind", 4, 32.0, 60.0, _profile([8.0]))
    # shorter work live but no queue (batch below full, nothing waiting): r starts at once, not counted
    control.admit("running", 4, 32.0, 60.0, dataclasses.replace(_profile([8.0]), has_queue=False))


def test_the_inflow_is_not_read_as_a_rate_before_a_whole_window_has_passed():
    now = [0.0]
    inflow = AdmittedInflow(window_s=60.0, clock=lambda: now[0])
    for _ in range(64):  # the queue filling at start
        inflow.on_admitted(30.0)
    now[0] = 59.0
    assert inflow.tokens_per_s_at_most(50.0) == 0.0
    now[0] = 60.0
    assert inflow.tokens_per_s_at_most(50.0) == pytest.approx(64 * 30.0 / 60.0)
    assert inflow.tokens_per_s_at_most(10.0) == 0.0  # longer work does not rank ahead


def test_arrivals_ahead_stretch_the_wait_up_to_the_overtake_horizon():
    profile = _profile([], horizon_s=30.0)
    assert profile.with_arrivals_ahead_s(2.0, 0.0) == 2.0
    assert profile.with_arrivals_ahead_s(2.0, 0.5) == pytest.approx(4.0)  # base / (1 - rho)
    assert profile.with_arrivals_ahead_s(20.0, 0.5) == pytest.approx(35.0)  # 40 s > 30 s: base + rho * H
    assert profile.with_arrivals_ahead_s(2.0, 2.0) == pytest.approx(62.0)  # overloaded: newcomers for H
    assert _profile([], horizon_s=float("inf")).with_arrivals_ahead_s(2.0, 1.0) == float("inf")


def test_the_ledger_names_engines_silent_for_too_long():
    now = [0.0]
    ledger = KvLedger(host_tier_capacity_bytes=0, host_tier_block_bytes=1024, stale_after_s=1.0, clock=lambda: now[0])
    layout = KvBlockLayout(16, 2, 2, 8, KvDtype.FLOAT32, 16 * 2 * 2 * 8 * 4 * 2)
    for engine_id in ("a", "b"):
        ledger.register(EngineRegistration(engine_id, "127.0.0.1:1", "m", 8, layout))
    now[0] = 5.0
    assert ledger.silent_engines(3.0) == ["a", "b"]
    assert ledger.silent_engines(10.0) == []


async def test_the_engines_queue_full_refusals_are_what_the_gateway_recognises():
    """Async only so that grpc.aio has a running loop for the (never used) channel: a sync test got
    "no current event loop" when an earlier test had closed the default one."""
    client = EngineClient(grpc.aio.insecure_channel("127.0.0.1:1"), "127.0.0.1:1")
    empty = _profile([], s_per_token=0.0)
    for max_live_requests, num_prompt_tokens in ((1, 1), (2, 50)):  # the live-request cap, the prompt-token cap
        control = AdmissionControl(AdmissionLimits(max_live_requests, max_live_prompt_tokens=100, deadline_slack=1.0))
        control.admit("a", 60, 10.0, None, empty)
        with pytest.raises(Overloaded) as refused:
            control.admit("b", num_prompt_tokens, 10.0, None, empty)
        assert refused.value.refusal_reason == RefusalReason.QUEUE_FULL
        trailing = refused.value.refusal_reason.metadata()  # what the status-mapping interceptor sends
        mapped = client._map_error(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, str(refused.value), trailing))
        assert isinstance(mapped, EngineQueueFull), refused.value
        assert mapped.refusal_reason == RefusalReason.QUEUE_FULL  # passed on to the gateway's client
    # the reason decides, not the text: a queue-full message without the reason is not taken as full
    assert not isinstance(
        client._map_error(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, str(refused.value))), EngineQueueFull
    )
    deadline = _rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "deadline cannot be met", RefusalReason.DEADLINE_UNMEETABLE.metadata()
    )
    mapped = client._map_error(deadline)
    assert isinstance(mapped, Overloaded) and not isinstance(mapped, EngineQueueFull)  # says nothing of the queue
    assert mapped.refusal_reason == RefusalReason.DEADLINE_UNMEETABLE
    draining = client._map_error(
        _rpc_error(grpc.StatusCode.UNAVAILABLE, "shutting down", RefusalReason.DRAINING.metadata())
    )
    assert draining.refusal_reason == RefusalReason.DRAINING


def _rpc_error(code: grpc.StatusCode, details: str, trailing: tuple = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details)


def test_the_drain_rate_spans_a_window_of_steps_not_the_last_one():
    rate = DrainRate(window_steps=3)
    assert rate.seconds_per_output_token == 0.0  # nothing measured
    rate.on_step(StepTiming(duration_s=0.5, model_s=0.5, num_scheduled_tokens=500, num_sampled_tokens=0))
    assert rate.seconds_per_output_token == 0.0  # a prefill-only step sampled nothing: still unmeasured
    rate.on_step(StepTiming(0.1, 0.1, 10, 10))
    rate.on_step(StepTiming(0.1, 0.1, 10, 10))
    assert rate.seconds_per_output_token == pytest.approx(0.7 / 20)  # the prefill step's time counts
    rate.on_step(StepTiming(0.1, 0.1, 10, 10))  # the prefill step leaves the window
    assert rate.seconds_per_output_token == pytest.approx(0.3 / 30)
    rate.on_step(None)  # no step ran
    assert rate.seconds_per_output_token == pytest.approx(0.01)
    with pytest.raises(ValueError):
        DrainRate(window_steps=0)


def test_a_queue_full_refusal_is_remembered_until_a_place_frees_or_it_ages_out():
    memory = QueueFullMemory("127.0.0.1:5", max_age_s=0.5)
    assert memory.full_reason(now_s=0.0) is None
    memory.on_queue_full("engine queue is full (64 live requests); retry later", now_s=10.0)
    reason = memory.full_reason(now_s=10.2)
    assert reason is not None and "127.0.0.1:5 refused a request 200 ms ago" in reason and "64 live" in reason
    memory.on_place_freed()  # one of this gateway's requests on it ended
    assert memory.full_reason(now_s=10.2) is None
    memory.on_queue_full("engine queue is full (64 live requests); retry later", now_s=20.0)
    assert memory.full_reason(now_s=20.5) is not None
    assert memory.full_reason(now_s=20.6) is None  # older than one health interval: the next poll knows better
    with pytest.raises(ValueError, match="max_age_s"):
        QueueFullMemory("x:1", max_age_s=0.0)


def test_queued_work_over_the_bound_shuts_a_replica_and_zero_means_no_bound():
    assert queued_work_reason("e:1", 2.5, 0.0) is None
    assert queued_work_reason("e:1", 1.0, 1.0) is None
    reason = queued_work_reason("e:1", 2.5, 1.0)
    assert reason == (
        "engine e:1 has 2.50 s of predicted work waiting to start, over the limit of 1 s (--max-queued-work-s)"
    )
    # the replica's batch is full and its next request ends later than the bound: that is the wait
    reason = queued_work_reason("e:1", 0.01, 0.05, slot_wait_s=0.6)
    assert reason is not None and "running batch is full and its next request ends in 0.60 s" in reason
    assert queued_work_reason("e:1", 0.01, 0.05, slot_wait_s=0.04) is None


def test_a_full_batch_makes_a_new_request_wait_for_its_first_running_request_to_end():
    """bench chaos at 20x: 16 requests filled the batch within 0.5 s; the next one waited 0.6 s for a place."""
    load = ReplicaLoadTracker()
    running = [load.begin(32.0, 32) for _ in range(16)]
    for generated, request in enumerate(running):  # the oldest has 16 tokens, the newest 1
        request.num_received_tokens = 16 - generated
    load.on_stats(polled_tokens=300.0, polled_work_s=0.6, mine_at_poll=300.0, polled_max_num_seqs=16)
    seconds_per_token = 0.002  # the full batch's step: 16 tokens in 32 ms
    assert load.first_slot_wait_s(seconds_per_token) == pytest.approx(16 * 0.032)  # the oldest's 16 tokens left
    waiting = load.begin(32.0, 32)  # sent, no token yet: it takes that place, the next one waits for the 2nd
    assert load.first_slot_wait_s(seconds_per_token) == pytest.approx(17 * 0.032)
    load.end(waiting)
    running[0].num_received_tokens = 31  # about to end: a new request would wait one step
    assert load.first_slot_wait_s(seconds_per_token) == pytest.approx(0.032)
    load.end(running[0])  # a place is free
    assert load.first_slot_wait_s(seconds_per_token) == 0.0


def test_no_slot_wait_below_the_batch_capacity_or_when_the_engine_does_not_report_it():
    load = ReplicaLoadTracker()
    started = [load.begin(8.0, 8) for _ in range(3)]
    for request in started:
        request.num_received_tokens = 1
    assert load.first_slot_wait_s(0.002) == 0.0  # capacity not reported (older engine): no figure
    load.on_stats(polled_tokens=21.0, polled_work_s=0.04, mine_at_poll=21.0, polled_max_num_seqs=4)
    load.begin(8.0, 8)  # 3 running + this one = the capacity of 4: it takes the last place
    assert load.first_slot_wait_s(0.002) == pytest.approx(7 * 0.002 * 4)  # the next one waits for the first end
    load.on_stats(polled_tokens=0.0, polled_work_s=0.0, mine_at_poll=0.0, polled_max_num_seqs=16)
    assert load.first_slot_wait_s(0.002) == 0.0  # room in a batch of 16


def test_requests_waiting_beyond_one_batch_push_the_slot_wait_past_the_last_running_end():
    """Each request waiting ahead takes the earliest place and holds it for its own tokens; the figure
    used to stop at the last running request's end however deep the queue (here 8 steps, not 16)."""
    load = ReplicaLoadTracker()
    load.on_stats(polled_tokens=0.0, polled_work_s=0.0, mine_at_poll=0.0, polled_max_num_seqs=4)
    for generated in (30, 28, 26, 24):  # running, 2 / 4 / 6 / 8 tokens left
        load.begin(32.0, 32).num_received_tokens = generated
    for _ in range(6):
        load.begin(10.0, 10)  # waiting, 10 tokens each: they free places at 12, 14, 16, 18, 22, 24
    assert load.first_slot_wait_s(0.001) == pytest.approx(16 * 0.001 * 4)


def test_a_bound_of_one_step_sends_a_request_only_when_a_place_frees_in_the_step_under_way():
    """--max-queued-steps 1: at 20x a request is sent only when it will find a place at the next step boundary,
    so it waits at most the rest of the step under way (with 0.05 s, ~2 steps, requests waited ~1.5 steps)."""
    load = ReplicaLoadTracker()
    load.on_stats(
        polled_tokens=0.0, polled_work_s=0.0, mine_at_poll=0.0, polled_s_per_token=0.0015, polled_max_num_seqs=4
    )
    running = [load.begin(32.0, 32) for _ in range(4)]
    for request, generated in zip(running, (30, 31, 20, 10)):  # 2 / 1 / 12 / 22 tokens left
        request.num_received_tokens = generated
    assert load.first_slot_wait_steps() == 1.0  # the second makes its last token in the step under way
    assert queued_steps_reason("e:1", load.first_slot_wait_steps(), 1.0, 0.006) is None  # sent
    waiting = load.begin(8.0, 8)  # sent: it takes that place
    assert load.first_slot_wait_steps() == 2.0  # the next place frees a step later: refused at a bound of 1
    reason = queued_steps_reason("e:1", load.first_slot_wait_steps(), 1.0, 0.006)
    assert reason == (
        "engine e:1's running batch is full and no place frees within 1 step(s): the next in 2 steps "
        "(~0.012 s, predicted) (--max-queued-steps)"
    )
    assert queued_steps_reason("e:1", 2.0, 0.0, 0.006) is None  # 0 = no bound
    assert load.first_slot_wait_s(0.0015) == pytest.approx(2.0 * 0.0015 * 4)  # the same wait in seconds
    load.end(waiting)
    load.end(running[1])  # a place is free now
    assert load.first_slot_wait_steps() == 0.0
