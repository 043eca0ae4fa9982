"""Continuous batching under a per-step token budget, over a paged KV pool.

Every step:
  1. running requests, in policy order, get the tokens they need (1 for a decode, a chunk of
     the prompt otherwise), within the token budget; if KV blocks run out, the lowest-priority
     running request not yet scheduled this step is preempted (recompute: its blocks are freed)
     until the request fits, or the request itself is preempted if it is the lowest;
  2. if nothing was preempted, waiting requests, in policy order, are admitted while the budget,
     the batch size limit and the free blocks allow (head-of-line: stop at the first misfit, so a
     big request is not starved by smaller ones behind it under FCFS).
The long prompt of a new request is chunked, so it never stalls running decodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from services.engine.block_pool import KvBlockManager
from services.engine.request import FinishReason, Request, RequestStatus
from services.engine.scheduler.output import ScheduledChunk, SchedulerOutput, StepResult
from services.engine.scheduler.policy import SchedulingPolicy, sorted_by_priority


@dataclass(frozen=True)
class SchedulerLimits:
    """Per-step limits of the batch."""

    max_num_seqs: int  # requests in the running batch at most
    max_num_batched_tokens: int  # tokens fed to the model per step at most (the token budget)
    max_model_len: int  # prompt + output tokens per request at most

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class Scheduler:
    """Owns the waiting and running sets; all methods run on the engine thread."""

    def __init__(
        self,
        policy: SchedulingPolicy,
        limits: SchedulerLimits,
        kv: KvBlockManager,
        eos_token_id: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.limits = limits
        self.kv = kv
        self.eos_token_id = eos_token_id
        self.clock = clock
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0  # preemptions since start

    # -- admission and abort -------------------------------------------------------------

    def add(self, request: Request) -> None:
        """Queues a request; the caller has checked that it can ever fit (see can_ever_fit)."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already live")
        self.requests[request.request_id] = request
        self.waiting.append(request)

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
        budget = self.limits.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        scheduled_ids: set[str] = set()
        preempted: list[str] = []
        for request in sorted_by_priority(self.policy, self.running, now_s):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:  # preempted earlier in this loop
                continue
            num_new = min(request.num_uncomputed_tokens, budget)
            if not self._make_room(request, num_new, scheduled_ids, preempted, now_s):
                continue
            chunks.append(self._chunk(request, num_new, now_s))
            scheduled_ids.add(request.request_id)
            budget -= num_new
        if not preempted:
            budget = self._admit_waiting(budget, chunks, now_s)
        return SchedulerOutput(chunks, preempted)

    def _make_room(
        self, request: Request, num_new: int, scheduled_ids: set[str], preempted: list[str], now_s: float
    ) -> bool:
        """Allocates blocks for num_new more tokens, preempting lower-priority running requests."""
        target = request.num_computed_tokens + num_new
        while not self.kv.allocate_slots(request.request_id, target):
            candidates = [r for r in self.running if r.request_id not in scheduled_ids]
            victim = max(candidates, key=lambda r: self.policy.priority_key(r, now_s))
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is request:
                return False
        return True

    def _admit_waiting(self, budget: int, chunks: list[ScheduledChunk], now_s: float) -> int:
        for request in sorted_by_priority(self.policy, self.waiting, now_s):
            if budget == 0 or len(self.running) >= self.limits.max_num_seqs:
                break
            num_new = min(request.num_uncomputed_tokens, budget)
            if not self.kv.allocate_slots(request.request_id, request.num_computed_tokens + num_new):
                break
            self.waiting.remove(request)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            chunks.append(self._chunk(request, num_new, now_s))
            budget -= num_new
        return budget

    def _chunk(self, request: Request, num_new: int, now_s: float) -> ScheduledChunk:
        if request.first_scheduled_time_s is None:
            request.first_scheduled_time_s = now_s
        samples = request.num_computed_tokens + num_new == request.num_tokens
        return ScheduledChunk(request, num_new, samples)

    def _preempt(self, request: Request) -> None:
        """Recompute preemption: drop the KV, keep the output, wait to run again."""
        self.kv.free(request.request_id)
        self.running.remove(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(request)

    # -- after the model ran -------------------------------------------------------------

    def update(self, output: SchedulerOutput, sampled: dict[str, int]) -> list[StepResult]:
        """Advances computed counts, appends sampled tokens, finishes requests that are done."""
        now_s = self.clock()
        results = []
        for chunk in output.chunks:
            request = chunk.request
            if request.status is not RequestStatus.RUNNING:  # aborted while the step ran
                continue
            request.num_computed_tokens += chunk.num_new_tokens
            if not chunk.samples_token:
                continue
            token_id = sampled[request.request_id]
            request.output_token_ids.append(token_id)
            if request.first_token_time_s is None:
                request.first_token_time_s = now_s
            reason = self._finish_reason(request, token_id)
            if reason is not None:
                self._finish(request, reason)
            results.append(StepResult(request.request_id, [token_id], reason))
        return results

    def _finish_reason(self, request: Request, token_id: int) -> FinishReason | None:
        if token_id == self.eos_token_id and not request.sampling.ignore_eos:
            return FinishReason.EOS
        if request.num_output_tokens >= request.sampling.max_tokens:
            return FinishReason.LENGTH
        if request.num_tokens >= self.limits.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, request: Request, reason: FinishReason) -> None:
        self.kv.free(request.request_id)
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        elif request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED):
            self.waiting.remove(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        del self.requests[request.request_id]

    # -- figures -------------------------------------------------------------------------

    @property
    def num_preempted(self) -> int:
        return sum(1 for r in self.waiting if r.status is RequestStatus.PREEMPTED)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def predicted_outstanding_tokens(self) -> float:
        """Sum of predicted remaining output tokens over live requests."""
        return sum(r.predicted_remaining_tokens for r in self.requests.values())
