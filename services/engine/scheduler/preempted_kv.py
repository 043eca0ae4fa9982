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

No swap where recompute is cheaper (`handler_pays`): an event whose victims' KV recomputes in less
engine time than that measured stall does not call the handler at all; its victims recompute,
and a displacement whose victim would be such an event is priced as a recompute with no stall.
Both stall and recompute hold the whole batch (one on the engine thread, the other as a longer
step), so engine seconds against engine seconds. Every REPROBE_EVERY_SKIPS-th skipped event calls
the handler anyway, so the stall estimate follows the machine's load. Issue 19: on the tiny-model
CPU stack victims held ~10 tokens (~1.5 ms to recompute) against stalls of 5-15 ms, plus the
prefetch thread and restores, and alise with swap reached 0.83-0.99x fcfs's closed-loop capacity
where alise recomputing everything reached 1.02-1.13x (three paired probes). In the simulator
the stall is 0, so nothing is skipped and its decisions are unchanged.
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
# An event that skips the handler (recompute cheaper than its stall) calls it anyway once in this
# many skips, to measure the stall again (see the module docstring).
REPROBE_EVERY_SKIPS = 32


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
        self._num_skips_since_probe = 0  # events that skipped the handler since it was last called
        self.num_events_skipped = 0  # eviction events whose victims all recomputed without asking the handler
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
        num_kv_tokens = sum(num_kv for _, _, num_kv in victims)
        if num_kv_tokens and self.handler.saves_kv and self._calls_handler(self._recompute_s(num_kv_tokens)):
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

    def _calls_handler(self, recompute_s: float) -> bool:
        """Whether this event asks the handler (see the module docstring): when it can pay, or as the
        periodic probe of its stall after REPROBE_EVERY_SKIPS skips."""
        if self.handler_pays(recompute_s):
            return True
        self._num_skips_since_probe += 1
        if self._num_skips_since_probe >= REPROBE_EVERY_SKIPS:
            self._num_skips_since_probe = 0
            return True
        self.num_events_skipped += 1
        return False

    def handler_pays(self, recompute_s: float) -> bool:
        """Whether saving KV that takes recompute_s to recompute may save engine time: not when the
        handler's measured stall per event alone exceeds it (0 until measured, 0 in the simulator)."""
        return self.handler.saves_kv and recompute_s >= self.mean_evict_stall_s

    def _recompute_s(self, num_kv_tokens: int) -> float:
        return self._cost_model.prefill_s_per_token * num_kv_tokens

    def _evicted_kv(
        self, waiting: WaitingQueue, num_running: int, request: Request, block_ids: list[int], num_kv_tokens: int
    ) -> EvictedKv:
        prefill_s = self._cost_model.prefill_s_per_token
        wait_s = expected_wait_s(request.rank_key, waiting, self.remaining_s, num_running)
        return EvictedKv(request, block_ids, num_kv_tokens, prefill_s * num_kv_tokens, wait_s)

    def preemption_cost_s(self, request: Request, num_blocks: int) -> float:
        """What preempting a running request costs the engine: recomputing its KV, or what the
        handler estimates for saving and restoring it, whichever is less."""
        recompute_s = self._recompute_s(request.num_computed_tokens)
        if not request.num_computed_tokens or not self.handler_pays(recompute_s):
            return recompute_s
        return min(recompute_s, self.handler.preemption_cost_s(request.num_computed_tokens, num_blocks, recompute_s))

    def eviction_stall_s(self, num_running: int, victim: Request) -> float:
        """What evicting `victim` in one more event costs the running batch: the measured stall, once
        per running request; 0 when the event would not call the handler (it saves nothing, or the
        victim recomputes more cheaply than the stall: handler_pays)."""
        if not self.handler_pays(self._recompute_s(victim.num_computed_tokens)):
            return 0.0
        return num_running * self.mean_evict_stall_s

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
