"""Ranking the running batch, and choosing victims: step 1 of a step (displacement) and the
preemptions of step 2 when KV runs short (see scheduler.py's docstring).

The running batch's rank keys change every step (its requests' remaining work changes), but a
step needs them only for a decision between requests: a victim when KV runs short or a waiting
request displaces someone, a sort when the budget cannot feed every running request or prompt
chunks compete. `RunningRanks` computes them at most once per step, at the first such decision,
so the common step (every running request gets its token, nobody is preempted) ranks nobody.

Invariant that keeps the decisions identical to ranking at the start of the step: a key depends
on the request's counts, its promotion, the cost model and the size of the running batch, and
none of these changes inside schedule() before the first decision that reads a key (preemption
and admission come after one; promotion touches only waiting requests).

The deferral bound of a displacement (`_pays`): besides the policy's judgement (time saved against
the victim's cost), a victim may be displaced only if its expected wait to resume, behind the
waiting requests its re-entry rank puts ahead of it (`requeue_key`, `expected_wait_s`), is at most
MAX_DEFERRAL_STEPS_PER_TOKEN decode steps per output token of its own: a victim keeps its first
token, so its wait lands in its time per output token, which the bound at most about doubles.
Without it, under a backlog the head of the queue displaced running requests into the back of the
queue, where they waited the backlog out mid-output (issue 19: on the real stack at 90% load alise's
p99 TPOT was 351 ms against fcfs's 56 ms; in the simulator on that CPU shape with gamma CV 2 arrivals,
23% of requests missed the 100 ms TPOT bound, with up to 8 preemptions each).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

from services.engine.block_pool import num_blocks_for
from services.engine.request import Request
from services.engine.scheduler.kv_eviction import expected_wait_s
from services.engine.scheduler.output import ScheduledChunk
from services.engine.scheduler.policy import SchedulingPolicy
from services.engine.scheduler.preemption import PreemptionCause
from services.engine.scheduler.waiting_queue import RANK

if TYPE_CHECKING:  # the scheduler imports this module
    from services.engine.scheduler.scheduler import Scheduler

# Rank of a promoted request: PROMOTED_BASE + its promotion time, below every policy key (>= 0),
# in promotion order among promoted requests.
PROMOTED_BASE = -1e15
# A displacement may delay its victim by at most this many decode steps per output token of the
# victim's (its produced ones plus the predicted rest): about doubling its time per output token.
MAX_DEFERRAL_STEPS_PER_TOKEN = 1.0


class RunningRanks:
    """Fresh rank keys on the running batch, computed lazily once per step (see the module docstring)."""

    def __init__(self, policy: SchedulingPolicy) -> None:
        self.policy = policy
        self._fresh = False

    def new_step(self) -> None:
        """The batch's remaining work changed since the last step: its keys are stale."""
        self._fresh = False

    def ensure(self, running: list[Request]) -> None:
        """Sets this step's keys on the running batch (once per step): the policy's key, or the
        promoted rank (below every policy key) for a promoted request."""
        if self._fresh:
            return
        self._fresh = True
        keys = self.policy.priority_keys(running)
        for request, key in zip(running, keys, strict=True):
            promoted_at_s = request.promoted_at_s
            request.rank_key = key if promoted_at_s is None else PROMOTED_BASE + promoted_at_s


def worst_first(running: list[Request], ranks: RunningRanks) -> Iterator[Request]:
    """Unpromoted running requests by decreasing rank key (the first of equals, in running order,
    comes first), lazily: nothing is ranked until the first victim is asked for, and the rest are
    sorted only when a second one is (displacement usually stops at the first)."""
    ranks.ensure(running)
    worst, worst_key = None, -math.inf
    for request in running:
        if request.promoted_at_s is None and request.rank_key > worst_key:
            worst, worst_key = request, request.rank_key
    if worst is None:
        return
    yield worst
    rest = [r for r in running if r.promoted_at_s is None and r is not worst]
    yield from sorted(rest, key=RANK, reverse=True)


def displace(scheduler: Scheduler, preempted: list[str], now_s: float) -> None:
    """Step 1: frees seats and blocks for waiting requests that the policy ranks clearly better,
    worst running request first; a waiting request that fits as things are displaces no one."""
    limits, kv = scheduler.limits, scheduler.kv
    victims = worst_first(scheduler.running, scheduler.ranks)
    seats = limits.max_num_seqs - len(scheduler.running)
    free_blocks = kv.pool.num_free_blocks
    chosen: list[Request] = []
    for waiting in scheduler.waiting:
        first_chunk = min(waiting.num_uncomputed_tokens, limits.max_num_batched_tokens)
        needed = num_blocks_for(waiting.num_computed_tokens + first_chunk, kv.block_size)
        taken: list[Request] = []
        while seats < 1 or free_blocks < needed:
            victim = next(victims, None)
            if victim is None:
                break
            num_victim_blocks = len(kv.block_table(victim.request_id))
            if waiting.promoted_at_s is None and not _pays(scheduler, waiting, victim, num_victim_blocks, now_s):
                break  # and then the head-of-line stop below: worse waiting ones displace no one
            seats += 1
            free_blocks += num_victim_blocks
            taken.append(victim)
        if seats < 1 or free_blocks < needed:
            break  # head-of-line: nothing behind it is better
        chosen.extend(taken)
        seats -= 1
        free_blocks -= needed
    for victim in chosen:
        scheduler._preempt(victim, now_s, PreemptionCause.DISPLACEMENT)
        preempted.append(victim.request_id)


def _pays(scheduler: Scheduler, waiting: Request, victim: Request, num_victim_blocks: int, now_s: float) -> bool:
    """Whether `waiting` may displace `victim`: the policy judges the time saved against the
    victim's cost (setting its KV aside, plus the eviction event's measured stall of the running
    batch, preempted_kv.py), and the victim's expected wait to resume (behind the requests its re-entry
    rank puts ahead of it) stays within MAX_DEFERRAL_STEPS_PER_TOKEN decode steps per output
    token of its own (see the module docstring)."""
    preempted_kv = scheduler.preempted_kv
    cost_s = preempted_kv.preemption_cost_s(victim, num_victim_blocks)
    policy = scheduler.policy
    if not policy.displaces(waiting, victim, cost_s + preempted_kv.eviction_stall_s(len(scheduler.running), victim)):
        return False
    num_output_tokens = len(victim.output_token_ids) + victim.predicted_remaining_tokens
    allowed_s = MAX_DEFERRAL_STEPS_PER_TOKEN * scheduler.cost_model.decode_step_s * num_output_tokens
    requeue_key = policy.requeue_key(victim, now_s, cost_s)
    num_seats = len(scheduler.running)
    return expected_wait_s(requeue_key, scheduler.waiting, preempted_kv.remaining_s, num_seats, allowed_s) <= allowed_s


def make_room(
    scheduler: Scheduler,
    request: Request,
    num_tokens: int,
    chunks: list[ScheduledChunk],
    preempted: list[str],
    now_s: float,
) -> bool:
    """KV ran short for `request`: preempts the worst running request not yet scheduled this step
    (step 2 has no chunk for it yet: `chunks` holds this step's running requests so far) until
    `request` gets blocks for num_tokens positions, or is itself the victim (False)."""
    running = scheduler.running
    scheduler.ranks.ensure(running)
    scheduled = {chunk.request for chunk in chunks}
    while True:
        victim = max((r for r in running if r not in scheduled), key=RANK)
        scheduler._preempt(victim, now_s, PreemptionCause.KV_SHORTAGE)
        preempted.append(victim.request_id)
        if victim is request:
            return False
        if scheduler.kv.allocate_slots(request.request_id, num_tokens):
            return True
