"""The scheduler's bookkeeping of preempted KV: the step's victims, whose KV is saved, and taking it
back at admission (see kv_eviction.py for the whole life cycle).

Victims are collected while the step is planned and settled once at its end, so the handler sees
one eviction event per step and a victim never re-enters the waiting queue in the step that evicted
it. Plain Python, no torch.

The handler's calls at an eviction event (the engine's: a PlanEviction round trip to the memory
service, then the copies) run on the engine thread inside schedule(), so every running request
waits for them, whichever victims end up saved. Their time is measured on the scheduler's clock
(`mean_evict_stall_s`), and a displacement is charged it once per running request
(`eviction_stall_s`): on the CPU stack under a load average of ~6 it was 5.4 ms per event (issue
19), and it grows with the machine's load, as the memory service must get a core to answer. The
simulator's handler takes no time on that clock (it charges its stalls to the step), so there it
is 0.
"""

from __future__ import annotations

import time
from typing import Callable

from services.engine.block_pool import num_blocks_for
from services.engine.request import Request
from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.scheduler.kv_eviction import (
    EvictedKv,
    KvEvictionHandler,
    KvRestore,
    RecomputeOnly,
    expected_wait_s,
)
from services.engine.scheduler.waiting_queue import WaitingQueue

STALL_SMOOTHING = 0.1  # weight of the newest eviction event in mean_evict_stall_s


class PreemptedKv:
    """Victims of the current step and the counters of where preempted KV went."""

    def __init__(
        self, cost_model: OnlineStepCostModel, block_size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.handler: KvEvictionHandler = RecomputeOnly()
        self._cost_model = cost_model
        self._block_size = block_size
        self._clock = clock
        # Seconds the handler's calls of one eviction event hold the engine thread (exponentially
        # weighted over events that called it; see the module docstring).
        self.mean_evict_stall_s = 0.0
        self._victims: list[tuple[Request, list[int], int]] = []  # (request, its block ids, its KV tokens)
        self.num_swapped_out = 0  # preemptions whose KV the handler saved
        self.num_restored = 0  # resumes that got their saved KV back
        self.num_restores_lost = 0  # resumes whose saved KV was gone (recomputed instead)
        self.num_recomputed_tokens = 0  # KV tokens dropped by preemption, to be computed again

    @property
    def has_victims(self) -> bool:
        return bool(self._victims)

    def add_victim(self, request: Request, block_ids: list[int]) -> None:
        """The request lost its device blocks (freed, contents intact until the model runs)."""
        self._victims.append((request, block_ids, request.num_computed_tokens))
        request.num_computed_tokens = 0

    def settle(self, waiting: WaitingQueue, now_s: float, num_running: int) -> None:
        """One eviction event: the handler saves some victims' KV, the rest recompute; then every
        victim waits to run again. num_running (the batch after this step's admissions) is how many
        requests run side by side, the seats in each victim's expected wait."""
        victims, self._victims = self._victims, []
        saved: set[str] = set()
        if self.handler.saves_kv and any(num_kv for _, _, num_kv in victims):
            evicted = [self._evicted_kv(waiting, num_running, *victim) for victim in victims if victim[2]]
            started_s = self._clock()
            saved = self.handler.evict(evicted)
            self.mean_evict_stall_s += STALL_SMOOTHING * (self._clock() - started_s - self.mean_evict_stall_s)
        for request, _, num_kv_tokens in victims:
            if request.request_id in saved:
                request.num_host_kv_tokens = request.num_computed_tokens = num_kv_tokens
                self.num_swapped_out += 1
            else:
                self.num_recomputed_tokens += num_kv_tokens
            waiting.add(request, now_s)

    def _evicted_kv(
        self, waiting: WaitingQueue, num_running: int, request: Request, block_ids: list[int], num_kv_tokens: int
    ) -> EvictedKv:
        prefill_s = self._cost_model.prefill_s_per_token
        wait_s = expected_wait_s(request.rank_key, waiting, self.remaining_s, num_running)
        return EvictedKv(request, block_ids, num_kv_tokens, prefill_s * num_kv_tokens, wait_s)

    def preemption_cost_s(self, request: Request, num_blocks: int) -> float:
        """What preempting a running request costs the engine: recomputing its KV, or what the
        handler estimates for saving and restoring it, whichever is less."""
        recompute_s = self._cost_model.prefill_s_per_token * request.num_computed_tokens
        if not self.handler.saves_kv or not request.num_computed_tokens:
            return recompute_s
        return min(recompute_s, self.handler.preemption_cost_s(request.num_computed_tokens, num_blocks, recompute_s))

    def eviction_stall_s(self, num_running: int) -> float:
        """What one more eviction event costs the running batch: the measured stall, once per running
        request (0 when the handler saves nothing: then settle() never calls it)."""
        return num_running * self.mean_evict_stall_s if self.handler.saves_kv else 0.0

    def remaining_s(self, request: Request) -> float:
        """Estimated seconds of work left, whatever the policy ranks by (for wait estimates)."""
        cost = self._cost_model
        return (
            cost.prefill_s_per_token * request.num_uncomputed_tokens
            + cost.decode_step_s * request.predicted_remaining_tokens
        )

    def check_restorable(self, request: Request) -> None:
        """Before admitting a request with saved KV: if the KV is gone, it recomputes from token 0."""
        if request.num_host_kv_tokens and not self.handler.ensure_restorable(request):
            self.num_recomputed_tokens += request.num_host_kv_tokens
            self.num_restores_lost += 1
            request.num_host_kv_tokens = request.num_computed_tokens = 0

    def restore_of(self, request: Request, block_table: list[int]) -> KvRestore:
        """The admitted request's saved KV goes into its first blocks before the model runs."""
        num_kv_tokens, request.num_host_kv_tokens = request.num_host_kv_tokens, 0
        self.num_restored += 1
        return KvRestore(
            request.request_id, block_table[: num_blocks_for(num_kv_tokens, self._block_size)], num_kv_tokens
        )

    def discard(self, request: Request) -> None:
        """The request finished or was aborted: its saved KV (if any) is freed."""
        if request.num_host_kv_tokens:
            request.num_host_kv_tokens = 0
            self.handler.discard(request.request_id)
