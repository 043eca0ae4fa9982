"""Where a preempted request's KV goes: the scheduler's side of the swap negotiation.

The scheduler picks victims (which requests lose their device blocks); a `KvEvictionHandler`
decides, for all victims of one step at once, whose KV is saved (swapped to the host tier, maybe
compressed) and whose is dropped to be recomputed. The engine's handler asks the memory service;
the simulator's charges transfer time on its virtual clock; `RecomputeOnly` saves nothing.

One step, seen from the KV blocks of a victim V:

    schedule():  _preempt(V): V's block ids leave its table and return to the free pool, but their
                 contents stay intact until the model runs, so
                 handler.evict([V ...]) can still copy them out      (end of schedule, once per step)
    V waits:     V.num_host_kv_tokens = n > 0, V.num_computed_tokens = n
                 handler.prefetch([...]) for swapped requests near the head of the queue
    admission:   handler.ensure_restorable(V) -> True: new blocks for V, a KvRestore in the output,
                 the engine copies the host KV into them before the model runs;
                 False (KV lost: memory service down, host tier full): V recomputes from token 0.

Invariant: a request's KV is in at most one place: device blocks (status RUNNING), the host tier
(num_host_kv_tokens > 0, not running), or nowhere (num_computed_tokens == 0 while waiting).
Plain Python, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

from services.engine.request import Request


@dataclass(frozen=True)
class EvictedKv:
    """One victim of a step, as the handler sees it."""

    request: Request  # the preempted request
    block_ids: list[int]  # physical blocks it held, in logical order; freed, contents intact until the model runs
    num_kv_tokens: int  # tokens whose KV those blocks hold (its num_computed_tokens before preemption)
    recompute_s: float  # engine time to compute that KV again (cost model), seconds
    expected_wait_s: float  # expected time until it runs again (from its rank), seconds


@dataclass(frozen=True)
class KvRestore:
    """Swapped KV to copy into device blocks before this step's model run."""

    request_id: str  # the resumed request
    block_ids: list[int]  # its first blocks, in logical order, that receive the KV
    num_kv_tokens: int  # tokens of KV to restore


class KvEvictionHandler(Protocol):
    """What the scheduler needs from whoever keeps preempted KV."""

    saves_kv: bool  # False: evict always returns nothing (the scheduler skips estimating waits)

    def evict(self, victims: list[EvictedKv]) -> set[str]:
        """Saves what it decides to save; returns the request ids whose KV was saved."""

    def ensure_restorable(self, request: Request) -> bool:
        """Called before a swapped request is admitted; False = its KV is lost, recompute it."""

    def prefetch(self, requests: list[Request]) -> None:
        """Swapped requests likely to run soon, best first: start bringing their KV back."""

    def restore(self, restores: list[KvRestore]) -> None:
        """Copies restored KV into device blocks; the engine calls it before running the step."""

    def discard(self, request_id: str) -> None:
        """The request finished or was aborted while its KV was saved: free it."""

    def preemption_cost_s(self, num_kv_tokens: int, num_blocks: int, recompute_s: float) -> float:
        """Estimated engine stall of saving this much KV and bringing it back (recompute_s when
        it would not be saved): what a policy weighs before displacing a running request."""


class RecomputeOnly:
    """Saves nothing: every victim recomputes (vLLM's default preemption mode)."""

    saves_kv = False

    def evict(self, victims: list[EvictedKv]) -> set[str]:
        return set()

    def ensure_restorable(self, request: Request) -> bool:
        return False

    def prefetch(self, requests: list[Request]) -> None:
        pass

    def restore(self, restores: list[KvRestore]) -> None:
        pass

    def discard(self, request_id: str) -> None:
        pass

    def preemption_cost_s(self, num_kv_tokens: int, num_blocks: int, recompute_s: float) -> float:
        return recompute_s


def expected_wait_s(
    victim_rank_key: float,
    waiting: Iterable[Request],
    remaining_s_of: Callable[[Request], float],
    num_seats: int,
    stop_above_s: float = math.inf,
) -> float:
    """Time until a victim runs again, if the requests ranked ahead of it run first, `num_seats`
    at a time (the scheduler passes the running batch's size: in the memory-bound regime KV, not
    max_num_seqs, caps it): the sum of their remaining times divided by the seats. Crude (it
    ignores who is running now and future arrivals) but monotone in rank, which is what the memory
    manager's choices (prefetch lead time, who keeps host space) need. A caller that only asks
    whether the wait exceeds stop_above_s gets a value above it as soon as the sum shows that,
    without reading the rest of the queue."""
    seats = max(1, num_seats)
    stop_above_ahead_s = stop_above_s * seats
    ahead_s = 0.0
    for request in waiting:  # best first
        if request.rank_key >= victim_rank_key or ahead_s > stop_above_ahead_s:
            break
        ahead_s += remaining_s_of(request)
    return ahead_s / seats
