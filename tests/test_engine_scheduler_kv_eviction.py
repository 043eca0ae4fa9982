"""The scheduler's side of swapping: one eviction event per step, saved KV kept across the wait and
handed back at admission, lost KV recomputed, discarded on abort (fake handler, fake model)."""

import pytest

from services.engine.request import RequestStatus
from services.engine.scheduler import OnlineStepCostModel
from services.engine.scheduler.kv_eviction import EvictedKv, KvRestore
from services.engine.scheduler.speculative_policy import MIN_GAIN_STEPS, AlisePolicy
from tests.engine_factories import TEST_COSTS, make_predicted_request, make_request, make_scheduler, run_step


class RecordingHandler:
    """Saves every victim (or none when `keeps` is False) and records what it was asked."""

    saves_kv = True

    def __init__(self, *, keeps: bool = True) -> None:
        self.keeps = keeps
        self.events: list[list[EvictedKv]] = []
        self.prefetched: list[str] = []
        self.restored: list[KvRestore] = []
        self.discarded: list[str] = []

    def evict(self, victims):
        self.events.append(list(victims))
        return {v.request.request_id for v in victims}

    def ensure_restorable(self, request):
        return self.keeps

    def prefetch(self, requests):
        self.prefetched.extend(r.request_id for r in requests)

    def restore(self, restores):
        self.restored.extend(restores)

    def discard(self, request_id):
        self.discarded.append(request_id)

    def preemption_cost_s(self, num_kv_tokens, num_blocks, recompute_s):
        return recompute_s / 10


def _memory_bound_scheduler(handler):
    """4 blocks of 4 tokens: two 6-token prompts fit, the third request's arrival cannot grow both."""
    scheduler = make_scheduler(num_blocks=4, block_size=4, token_budget=64, max_num_seqs=8)
    scheduler.eviction = handler
    return scheduler


def _run_until_preempted(scheduler):
    scheduler.add(make_request("a", 6, max_tokens=8))
    scheduler.add(make_request("b", 6, max_tokens=8))
    for _ in range(10):
        output, _ = run_step(scheduler)
        if output.preempted_request_ids:
            return output
    raise AssertionError("no preemption happened")


def test_victims_of_a_step_are_settled_in_one_event_and_keep_their_computed_tokens():
    handler = RecordingHandler()
    scheduler = _memory_bound_scheduler(handler)
    output = _run_until_preempted(scheduler)
    assert len(handler.events) == 1
    (victim,) = handler.events[0]
    request = victim.request
    assert output.preempted_request_ids == [request.request_id]
    assert victim.num_kv_tokens > 0 and len(victim.block_ids) == -(-victim.num_kv_tokens // 4)
    assert victim.recompute_s > 0 and victim.expected_wait_s >= 0
    assert request.status is RequestStatus.PREEMPTED
    assert request.num_host_kv_tokens == request.num_computed_tokens == victim.num_kv_tokens
    assert all(chunk.request is not request for chunk in output.chunks)  # not taken back in the same step
    assert scheduler.num_recomputed_tokens == 0 and scheduler.preempted_kv.num_swapped_out == 1


def test_a_resumed_request_gets_its_kv_restored_into_its_first_blocks_and_is_prefetched_first():
    handler = RecordingHandler()
    scheduler = _memory_bound_scheduler(handler)
    _run_until_preempted(scheduler)
    victim = handler.events[0][0]
    for _ in range(40):
        output, _ = run_step(scheduler)
        if output.restores:
            break
    (restore,) = output.restores
    assert restore.request_id == victim.request.request_id and restore.num_kv_tokens == victim.num_kv_tokens
    assert restore.block_ids == scheduler.kv.block_table(restore.request_id)[: len(victim.block_ids)]
    assert victim.request.request_id in handler.prefetched
    chunk = next(c for c in output.chunks if c.request.request_id == restore.request_id)
    assert chunk.num_context_tokens - chunk.num_new_tokens == victim.num_kv_tokens  # no recompute
    assert victim.request.num_host_kv_tokens == 0 and scheduler.preempted_kv.num_restored == 1


def test_lost_kv_is_recomputed_from_the_first_token():
    handler = RecordingHandler(keeps=False)
    scheduler = _memory_bound_scheduler(handler)
    _run_until_preempted(scheduler)
    victim = handler.events[0][0]
    for _ in range(40):
        output, _ = run_step(scheduler)
        chunks = [c for c in output.chunks if c.request is victim.request]
        if chunks:
            break
    assert not output.restores
    assert chunks[0].num_context_tokens == chunks[0].num_new_tokens  # from token 0
    assert scheduler.preempted_kv.num_restores_lost == 1
    assert scheduler.num_recomputed_tokens == victim.num_kv_tokens


def test_aborting_a_swapped_request_discards_its_saved_kv():
    handler = RecordingHandler()
    scheduler = _memory_bound_scheduler(handler)
    _run_until_preempted(scheduler)
    victim = handler.events[0][0].request
    scheduler.abort(victim.request_id)
    assert handler.discarded == [victim.request_id] and victim.num_host_kv_tokens == 0
    for request_id in list(scheduler.requests):
        scheduler.abort(request_id)
    assert scheduler.kv.pool.num_free_blocks == 4 and handler.discarded == [victim.request_id]


def test_without_a_handler_every_victim_recomputes():
    scheduler = make_scheduler(num_blocks=4, block_size=4, token_budget=64, max_num_seqs=8)
    _run_until_preempted(scheduler)
    preempted = [r for r in scheduler.waiting if r.status is RequestStatus.PREEMPTED]
    assert preempted and all(r.num_computed_tokens == 0 and r.num_host_kv_tokens == 0 for r in preempted)
    assert scheduler.num_recomputed_tokens > 0


def test_alise_displacement_weighs_what_setting_the_victim_aside_costs():
    """A victim that is cheap to swap out and back may be displaced where recomputing it would not pay."""
    cost_model = OnlineStepCostModel(TEST_COSTS)
    policy = AlisePolicy(cost_model)
    running = make_predicted_request("long", 2000, max_tokens=500, predicted_tokens=40)
    running.num_computed_tokens = 2000
    waiting = make_predicted_request("short", 8, max_tokens=500, predicted_tokens=20)
    margin_s = policy.remaining_s(running) - policy.remaining_s(waiting) - MIN_GAIN_STEPS * cost_model.decode_step_s
    recompute_s = cost_model.prefill_s_per_token * running.num_computed_tokens
    assert 0 < margin_s < recompute_s  # recomputing 2,000 tokens costs more than the waiting one saves
    assert not policy.displaces(waiting, running, recompute_s)
    assert policy.displaces(waiting, running, margin_s * 0.5)  # a swap costing half the margin pays


class SlowHandler(RecordingHandler):
    """Saves every victim, holding the engine thread for stall_s of the scheduler's clock per event."""

    def __init__(self, clock, stall_s: float) -> None:
        super().__init__()
        self.clock, self.stall_s = clock, stall_s

    def evict(self, victims):
        self.clock.now_s += self.stall_s
        return super().evict(victims)


def test_the_eviction_events_measured_stall_is_charged_to_a_displacement_once_per_running_request():
    from services.engine.scheduler.preempted_kv import STALL_SMOOTHING
    from tests.engine_factories import FakeClock

    clock = FakeClock()
    scheduler = make_scheduler(
        policy="alise", max_num_seqs=1, num_blocks=256, token_budget=512, max_model_len=1024, clock=clock
    )
    handler = SlowHandler(clock, stall_s=0.05)
    scheduler.eviction = handler
    kv = scheduler.preempted_kv
    # victims of 400 prompt tokens: 40 ms to recompute, above the stall measured so far (handler_pays)
    victim = make_predicted_request("victim", 400, max_tokens=400, predicted_tokens=300)
    victim.num_computed_tokens = 400
    assert kv.mean_evict_stall_s == 0.0 and kv.eviction_stall_s(8, victim) == 0.0  # nothing measured yet
    for index in range(3):  # three eviction events, each holding the engine thread 50 ms
        scheduler.add(make_predicted_request(f"long-{index}", 400, max_tokens=400, predicted_tokens=300))
        run_step(scheduler)
        scheduler.add(make_predicted_request(f"short-{index}", 4, max_tokens=400, predicted_tokens=10))
        output, _ = run_step(scheduler)
        assert output.preempted_request_ids, "a clearly longer running request is displaced"
        for request_id in list(scheduler.requests):
            scheduler.abort(request_id)
    expected_s = 0.05 * (1 - (1 - STALL_SMOOTHING) ** 3)
    assert len(handler.events) == 3 and kv.mean_evict_stall_s == pytest.approx(expected_s)
    assert kv.eviction_stall_s(8, victim) == pytest.approx(8 * expected_s)
    # The policy weighs the stall of the whole batch: enough running requests make a gain too small.
    policy = scheduler.policy
    running = make_predicted_request("running", 4, max_tokens=400, predicted_tokens=60)
    waiting = make_predicted_request("waiting", 4, max_tokens=400, predicted_tokens=10)
    gain_s = policy.remaining_s(running) - policy.remaining_s(waiting)
    assert policy.displaces(waiting, running, kv.eviction_stall_s(1, victim))
    assert not policy.displaces(waiting, running, kv.eviction_stall_s(int(gain_s / expected_s) + 1, victim))


def test_without_a_saving_handler_no_stall_is_charged():
    scheduler = make_scheduler(policy="alise")
    victim = make_request("victim", 400)
    victim.num_computed_tokens = 400
    assert scheduler.preempted_kv.eviction_stall_s(8, victim) == 0.0


def _settle_one_victim(scheduler, request_id: str, num_kv_tokens: int) -> None:
    """One eviction event with one victim holding num_kv_tokens of KV (its blocks as the pool gave them)."""
    request = make_request(request_id, num_kv_tokens)
    scheduler.requests[request_id] = request
    assert scheduler.kv.allocate_slots(request_id, num_kv_tokens)
    request.num_computed_tokens = num_kv_tokens
    scheduler.preempted_kv.add_victim(request, list(scheduler.kv.block_table(request_id)))
    scheduler.kv.free(request_id)
    scheduler.preempted_kv.settle(scheduler.waiting, 0.0, 1)


def test_no_swap_where_recompute_is_cheaper_than_the_handlers_stall():
    """Issue 19: once an event's measured stall exceeds what recomputing the victims costs, later such
    events skip the handler (victims recompute, no stall charged, priced as a recompute); every
    REPROBE_EVERY_SKIPS-th skip asks it anyway, and victims worth more than the stall still swap."""
    from services.engine.scheduler.preempted_kv import REPROBE_EVERY_SKIPS
    from tests.engine_factories import FakeClock

    clock = FakeClock()
    scheduler = make_scheduler(policy="alise", num_blocks=256, clock=clock)
    handler = SlowHandler(clock, stall_s=0.05)
    scheduler.eviction = handler
    kv = scheduler.preempted_kv
    _settle_one_victim(scheduler, "first", 8)  # nothing measured yet: asked (and saved)
    assert len(handler.events) == 1 and kv.num_swapped_out == 1 and kv.mean_evict_stall_s > 8 * 1e-4
    small = make_request("small", 8)
    small.num_computed_tokens = 8  # 0.8 ms to recompute against a ~5 ms stall
    assert not kv.handler_pays(8 * 1e-4)
    assert kv.eviction_stall_s(8, small) == 0.0
    assert kv.preemption_cost_s(small, 2) == pytest.approx(8 * 1e-4)  # not the handler's 1/10 of it
    for index in range(REPROBE_EVERY_SKIPS - 1):
        _settle_one_victim(scheduler, f"skipped-{index}", 8)
    assert len(handler.events) == 1 and kv.num_events_skipped == REPROBE_EVERY_SKIPS - 1
    assert kv.num_swapped_out == 1 and kv.num_recomputed_tokens == 8 * (REPROBE_EVERY_SKIPS - 1)
    _settle_one_victim(scheduler, "probe", 8)  # the periodic probe of the stall
    assert len(handler.events) == 2 and kv.num_swapped_out == 2
    _settle_one_victim(scheduler, "large", 200)  # 20 ms of recompute > the ~9.5 ms stall: worth asking
    assert len(handler.events) == 3 and kv.num_swapped_out == 3


def test_expected_wait_stops_reading_the_queue_once_it_exceeds_the_asked_bound():
    from services.engine.scheduler.kv_eviction import expected_wait_s

    queue = [make_request(f"w{index}", 4) for index in range(100)]
    for index, request in enumerate(queue):
        request.rank_key = float(index)
    read: list[str] = []

    def remaining_s_of(request):
        read.append(request.request_id)
        return 1.0

    assert expected_wait_s(1000.0, queue, remaining_s_of, num_seats=2) == 50.0
    read.clear()
    assert expected_wait_s(1000.0, queue, remaining_s_of, num_seats=2, stop_above_s=5.0) > 5.0
    assert len(read) == 11  # 11 x 1 s over 2 seats is the first sum above 5 s
    assert expected_wait_s(50.0, queue, remaining_s_of, num_seats=2, stop_above_s=100.0) == 25.0
