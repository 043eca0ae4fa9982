"""Continuous batching under a per-step token budget, over a paged KV pool, for any policy.

Every step:
  0. starvation promotion: a request that has waited max_wait_s is promoted; promoted requests rank
     ahead of all others (among themselves, in promotion order) and are never displaced;
  1. displacement (policies with preempts_for_waiting): while the best waiting request cannot get a
     batch seat or KV blocks, and the policy says it displaces the worst running request, that one
     is preempted to make room, unless it would then wait too long to resume (displacement.py);
  2. running requests get the tokens they need within the token budget: decodes first (1 token
     each), then prompt chunks, each group best first; if KV blocks run out, the worst running
     request not yet scheduled this step is preempted until the request fits (or the request itself);
  3. unless step 2 ran short of KV, waiting requests are admitted best first while the budget, the
     seats and the free blocks allow (head-of-line: stop at the first misfit, so a big request is
     not starved by smaller ones behind it); a preempted request also needs the readmission headroom.
Running decodes are served before any prompt chunk, so a long prompt never stalls them, whatever
rank a policy gives the prompt's request. A preempted request's KV is saved (swapped) or dropped
(recompute), for all of the step's victims at once at the end of the step (preempted_kv.py).

Worst-case wait (the aging bound): a request that has waited max_wait_s is promoted, so it starts at
the first step after that at which the requests promoted before it leave room; with displacing
policies, promotion evicts unpromoted running requests, so a lone promoted request starts at the
next step. Once promoted it keeps the rank until it finishes (no further starvation).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping

from services.engine.block_pool import KvBlockManager
from services.engine.request import FinishReason, Request, RequestStatus
from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.scheduler.displacement import PROMOTED_BASE, RunningRanks, displace, make_room
from services.engine.scheduler.kv_eviction import KvEvictionHandler, KvRestore
from services.engine.scheduler.limits import SchedulerLimits
from services.engine.scheduler.output import ScheduledChunk, SchedulerOutput, StepResult
from services.engine.scheduler.policy import SchedulingPolicy
from services.engine.scheduler.preempted_kv import PreemptedKv
from services.engine.scheduler.preemption import PreemptionCause
from services.engine.scheduler.readmission import headroom_blocks, readmit_headroom_tokens
from services.engine.scheduler.steady import SteadyDecodes, StepResults
from services.engine.scheduler.verified_update import apply_verified
from services.engine.scheduler.waiting_queue import RANK, RankKey, WaitingQueue

# Swapped requests among this many at the head of the waiting queue are prefetched.
PREFETCH_SCAN = 16


class Scheduler:
    """Owns the waiting and running sets; all methods run on the engine thread."""

    def __init__(
        self,
        policy: SchedulingPolicy,
        limits: SchedulerLimits,
        kv: KvBlockManager,
        eos_token_id: int | None,
        clock: Callable[[], float] = time.monotonic,
        cost_model: OnlineStepCostModel | None = None,
        eviction: KvEvictionHandler | None = None,
    ) -> None:
        self.policy = policy
        self.limits = limits
        self.kv = kv
        self.eos_token_id = eos_token_id
        self.clock = clock
        self.cost_model = cost_model or policy.cost_model or OnlineStepCostModel()
        self.waiting = WaitingQueue(self._rank_key, policy.ttft_window)  # best first
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0  # preemptions since start (KV shortage or displacement)
        self.num_preemptions_by_cause = dict.fromkeys(PreemptionCause, 0)  # the same, split by cause
        self.max_wait_s = 0.0  # longest completed wait (arrival or preemption until running), seconds
        # Where preempted KV goes (saved by the eviction handler, or recomputed) and its counters.
        self.preempted_kv = PreemptedKv(self.cost_model, kv.block_size, clock)
        if eviction is not None:
            self.preempted_kv.handler = eviction
        self._ranked_version = self.cost_model.version
        # The running batch's rank keys, computed at most once per step and only when a decision
        # reads them (displacement.py).
        self.ranks = RunningRanks(policy)
        self.readmit_headroom_tokens = readmit_headroom_tokens(limits, policy)  # tokens per running request
        # The steady decode step as columns (steady.py); it trusts no count across a status change.
        self.steady = SteadyDecodes(kv.block_size)
        self.num_status_changes = 0  # preemptions and finishes so far
        # Whether running requests may carry draft slots (set before schedule() by a speculator): an engine
        # without one says False, and its steady decode step skips the per-request look for drafts.
        self.drafts_possible = True
        self.finished_request_ids: list[str] = []  # those the last update() finished

    # -- admission and abort -------------------------------------------------------------

    def add(self, request: Request) -> None:
        """Queues a request; the caller has checked that it can ever fit (see can_ever_fit)."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already live")
        self.requests[request.request_id] = request
        self.waiting.add(request, self.clock())

    def can_ever_fit(self, num_prompt_tokens: int, max_tokens: int) -> bool:
        """Whether the whole KV pool can hold the request at its longest."""
        return self.kv.can_fit(num_prompt_tokens + max_tokens)

    def abort(self, request_id: str) -> Request | None:
        """Removes a live request and frees its blocks; None if it is not live."""
        request = self.requests.get(request_id)
        if request is None:
            return None
        self._finish(request, FinishReason.ABORTED)
        return request

    # -- one step ------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        now_s = self.clock()
        if self.cost_model.version != self._ranked_version:
            self._ranked_version = self.cost_model.version
            self.waiting.rerank()
        if not math.isinf(self.limits.max_wait_s):
            self.waiting.promote_starved(now_s, self.limits.max_wait_s)
        if self.waiting.ttft_window is not None and self.waiting:
            self.waiting.update_urgency(now_s)
        self.ranks.new_step()
        preempted: list[str] = []
        if self.policy.preempts_for_waiting and self.waiting:
            displace(self, preempted, now_s)
        chunks: list[ScheduledChunk] = []
        restores: list[KvRestore] = []
        budget = self.limits.max_num_batched_tokens
        decodes = self.steady.schedule(self) if 0 < len(self.running) <= budget else None
        if decodes is None:
            budget, short_of_kv = self._schedule_running(chunks, preempted, now_s)
        else:
            budget, short_of_kv = budget - len(decodes), False
        if not short_of_kv:
            self._admit_waiting(budget, chunks, restores, now_s)
        if self.preempted_kv.has_victims:
            self.preempted_kv.settle(self.waiting, now_s, len(self.running))
        if self.eviction.saves_kv and self.waiting:
            self.eviction.prefetch([r for r in self.waiting.head(PREFETCH_SCAN) if r.num_host_kv_tokens])
        return SchedulerOutput(chunks, preempted, restores, decodes)

    def _schedule_running(self, chunks: list[ScheduledChunk], preempted: list[str], now_s: float) -> tuple[int, bool]:
        """Step 2; returns the budget left and whether KV ran short.

        Fast path (the common case, and the hot loop of a step): when the budget can feed every
        running request one token, decodes are served in running order without sorting, in one pass
        that also sets the prefilling requests aside; a decode needs new blocks only when its next
        position starts a block (the table always covers num_computed_tokens). Otherwise decodes
        are served best first (_service_order). Either way the outcome is the same as serving
        `_service_order(budget)` one by one."""
        budget = self.limits.max_num_batched_tokens
        if len(self.running) > budget:
            return self._schedule_in_order(self._service_order(budget), budget, chunks, preempted, now_s)
        short_of_kv = False
        block_size, allocate_slots, append = self.kv.block_size, self.kv.allocate_slots, chunks.append
        running = RequestStatus.RUNNING
        prefills = []
        spare = budget - len(self.running)  # budget beyond one token per running request: drafts may use it
        for request in list(self.running):
            if request.status is not running:  # preempted earlier in this step
                continue
            computed = request.num_computed_tokens
            num_tokens = len(request.prompt_token_ids) + len(request.output_token_ids)
            if num_tokens - computed > 1:
                prefills.append(request)
                continue
            num_drafts = request.num_draft_slots
            if num_drafts:
                num_drafts = self._grant_drafts(request, num_drafts, spare, num_tokens)
                spare -= num_drafts
            if not (num_drafts or computed % block_size) and not allocate_slots(request.request_id, num_tokens):
                short_of_kv = True
                if not make_room(self, request, num_tokens, chunks, preempted, now_s):
                    continue
            if request.first_scheduled_time_s is None:
                request.first_scheduled_time_s = now_s
            append(ScheduledChunk(request, 1 + num_drafts, True, num_tokens + num_drafts, num_drafts))
            budget -= 1 + num_drafts
        if not prefills:
            return budget, short_of_kv
        self.ranks.ensure(self.running)
        prefills.sort(key=RANK)
        budget, short_in_prefills = self._schedule_in_order(prefills, budget, chunks, preempted, now_s)
        return budget, short_of_kv or short_in_prefills

    def _grant_drafts(self, request: Request, num_drafts: int, spare: int, num_tokens: int) -> int:
        """Draft positions a decode verifies this step: what it asked for, within the spare budget and
        the free KV blocks (drafts never preempt anyone: without blocks the decode runs plain)."""
        if num_drafts > spare:
            num_drafts = spare if spare > 0 else 0
        if num_drafts and not self.kv.allocate_slots(request.request_id, num_tokens + num_drafts):
            return 0
        return num_drafts

    def _schedule_in_order(
        self, order: list[Request], budget: int, chunks: list[ScheduledChunk], preempted: list[str], now_s: float
    ) -> tuple[int, bool]:
        """Serves `order` one by one within the budget; returns the budget left and whether KV ran short."""
        short_of_kv = False
        allocate_slots = self.kv.allocate_slots
        for request in order:
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:  # preempted earlier in this step
                continue
            computed = request.num_computed_tokens
            num_tokens = len(request.prompt_token_ids) + len(request.output_token_ids)
            num_new = num_tokens - computed if num_tokens - computed <= budget else budget
            target = computed + num_new
            if not allocate_slots(request.request_id, target):
                short_of_kv = True
                if not make_room(self, request, target, chunks, preempted, now_s):
                    continue
            if request.first_scheduled_time_s is None:
                request.first_scheduled_time_s = now_s
            chunks.append(ScheduledChunk(request, num_new, target == num_tokens, target))
            budget -= num_new
        return budget, short_of_kv

    def _service_order(self, budget: int) -> list[Request]:
        """Running requests that only decode (one token), then those still prefilling, each group
        best first: a policy may rank a short job with a long prompt first, but its prompt chunks
        must never take the budget that running decodes need. Decodes are sorted only when the
        budget cannot feed them all (sorting 256 requests every step is a third of the overhead)."""
        decodes, prefills = [], []
        for request in self.running:
            if len(request.prompt_token_ids) + len(request.output_token_ids) - request.num_computed_tokens <= 1:
                decodes.append(request)
            else:
                prefills.append(request)
        if len(decodes) > budget or prefills:
            self.ranks.ensure(self.running)
        if len(decodes) > budget:
            decodes.sort(key=RANK)
        if prefills:
            prefills.sort(key=RANK)
            decodes.extend(prefills)
        return decodes

    def _admit_waiting(
        self, budget: int, chunks: list[ScheduledChunk], restores: list[KvRestore], now_s: float
    ) -> None:
        """Step 3. This step's victims are not in the queue yet (PreemptedKv.settle runs after), so what
        was just evicted is not taken back in the same step."""
        admitted = 0
        for request in self.waiting:
            if budget == 0 or len(self.running) >= self.limits.max_num_seqs:
                break
            self.preempted_kv.check_restorable(request)
            num_new = min(request.num_uncomputed_tokens, budget)
            keep_free = headroom_blocks(request, self.readmit_headroom_tokens, len(self.running), self.kv.block_size)
            if not self.kv.allocate_slots(request.request_id, request.num_computed_tokens + num_new, keep_free):
                break
            if request.num_host_kv_tokens:
                restores.append(self.preempted_kv.restore_of(request, self.kv.block_table(request.request_id)))
            admitted += 1
            self.max_wait_s = max(self.max_wait_s, now_s - request.wait_started_s)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(self._chunk(request, num_new, now_s))
            budget -= num_new
        self.waiting.pop_head(admitted)  # admitted requests are exactly the head of the queue

    def _chunk(self, request: Request, num_new: int, now_s: float) -> ScheduledChunk:
        if request.first_scheduled_time_s is None:
            request.first_scheduled_time_s = now_s
        target = request.num_computed_tokens + num_new
        num_tokens = len(request.prompt_token_ids) + len(request.output_token_ids)
        return ScheduledChunk(request, num_new, target == num_tokens, target)

    def _preempt(self, request: Request, now_s: float, cause: PreemptionCause) -> None:
        """Takes the request's blocks back, keeps its output; whether its KV is saved or will be
        recomputed is settled for all of the step's victims at once, at the end of the step."""
        self.preempted_kv.add_victim(request, list(self.kv.block_table(request.request_id)))
        self.kv.free(request.request_id)
        self.running.remove(request)
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.num_status_changes += 1
        self.num_preemptions_by_cause[cause] += 1

    # -- ranking ---------------------------------------------------------------

    def _rank_key(self, request: Request) -> RankKey:
        if request.promoted_at_s is not None:
            return PROMOTED_BASE + request.promoted_at_s
        return self.policy.priority_key(request)

    # -- after the model ran -------------------------------------------------------------

    def update(
        self, output: SchedulerOutput, sampled: Mapping[str, int], verified: dict[str, list[int]] | None = None
    ) -> StepResults:
        """Advances computed counts, appends sampled tokens, finishes requests that are done (their ids
        in finished_request_ids). Decode columns go through steady.py when they are its own (their results
        stay columns: StepResults).

        sampled: the token of each request that samples this step; verified: for each verify chunk
        (num_draft_tokens > 0) its accepted drafts followed by one token (spec/verification.py)."""
        now_s = self.clock()
        verified = verified or {}
        eos_token_id, last_position = self.eos_token_id, self.limits.max_model_len - 1
        running = RequestStatus.RUNNING
        self.finished_request_ids = []
        results, chunks = self.steady.update_output(self, output, sampled, now_s)
        append = results.append
        for chunk in chunks:  # one pass per request every step: keep it lean
            request = chunk.request
            if request.status is not running:  # aborted while the step ran
                continue
            request.num_computed_tokens += chunk.num_new_tokens
            if not chunk.samples_token:
                continue
            if chunk.num_draft_tokens:
                append(apply_verified(self, request, chunk, verified[request.request_id], now_s))
                continue
            request_id = request.request_id
            token_id = sampled[request_id]
            output_ids = request.output_token_ids
            output_ids.append(token_id)
            if request.first_token_time_s is None:
                request.first_token_time_s = now_s
            # A sampling chunk caught its request up: it now holds num_context_tokens + 1 tokens.
            if (
                token_id == eos_token_id
                or len(output_ids) >= request.sampling.max_tokens
                or chunk.num_context_tokens >= last_position
            ):  # the common case, a token that finishes nothing, skips the call
                reason = self._finish_reason(request, token_id)
                if reason is not None:
                    self._finish_after_step(request, reason)
                append(StepResult(request_id, [token_id], reason))
            else:
                append(StepResult(request_id, [token_id], None))
        if verified or self.cost_model.tokens_per_decode_step != 1.0:  # speculative decoding in use
            self.cost_model.observe_decode_yield(len(results), sum(len(r.new_token_ids) for r in results))
        return results

    def record_step_time(self, output: SchedulerOutput, step_s: float) -> None:
        """Feeds one measured (or simulated) step to the cost model."""
        self.cost_model.observe(output.num_scheduled_tokens, output.num_kv_tokens_read, step_s)

    def _finish_reason(self, request: Request, token_id: int) -> FinishReason | None:
        if token_id == self.eos_token_id and not request.sampling.ignore_eos:
            return FinishReason.EOS
        num_output = len(request.output_token_ids)
        if num_output >= request.sampling.max_tokens:
            return FinishReason.LENGTH
        if len(request.prompt_token_ids) + num_output >= self.limits.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish_after_step(self, request: Request, reason: FinishReason) -> None:
        """A request this step's tokens finished: also listed in finished_request_ids (whose rows the
        engine core forgets; an abort forgets its own)."""
        self._finish(request, reason)
        self.finished_request_ids.append(request.request_id)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        self.num_status_changes += 1
        self.kv.free(request.request_id)
        self.preempted_kv.discard(request)
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            self.waiting.remove(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        request.finish_time_s = self.clock()
        del self.requests[request.request_id]

    # -- figures -------------------------------------------------------------------------

    @property
    def eviction(self) -> KvEvictionHandler:
        """Who keeps preempted KV (default: nobody, every victim recomputes)."""
        return self.preempted_kv.handler

    @eviction.setter
    def eviction(self, handler: KvEvictionHandler) -> None:
        self.preempted_kv.handler = handler

    @property
    def num_recomputed_tokens(self) -> int:
        return self.preempted_kv.num_recomputed_tokens

    @property
    def num_preempted(self) -> int:
        return sum(1 for r in self.waiting if r.status is RequestStatus.PREEMPTED)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def predicted_outstanding_tokens(self) -> float:
        """Sum of predicted remaining output tokens over live requests."""
        return sum(r.predicted_remaining_tokens for r in self.requests.values())
