"""The waiting queue: kept sorted by rank, so a step looks only at its head.

Sorting 1,000 waiting requests every step would cost more than the whole step budget, so each
request's rank key is computed when it enters the queue and cached on it (`request.rank_key`). This
is valid because a policy's key for a waiting request does not change while it waits (see the
SchedulingPolicy invariant); when the cost model is refitted, `rerank` recomputes every key.

Starvation promotion needs the requests in the order they started waiting: `_wait_order` is an
insertion-ordered dict of the unpromoted ones, so the starved are always a prefix of it.

TTFT-slack promotion (a policy's `ttft_window`, speculative_policy.py) re-keys a request twice, each
time as an event of its own (never a key that changes silently): when it comes within `lead_s` of its
TTFT target without a first token it becomes urgent, ranked by its TTFT deadline ahead of every
normal key; when the deadline passes (it has missed) it gets its policy key back. Both events follow
arrival order, so `_pending` is a heap by arrival time of the requests not yet urgent, and `_urgent`
one of the urgent by deadline (stale entries are skipped: `_entry` holds each live entry's number).

    waiting (by rank):      [ promoted (key < -1e14) ... | urgent (URGENT_BASE + deadline) ... | normal (key >= 0) ... ]
    _wait_order (by time):  { oldest wait, ..., newest wait }   (unpromoted only)
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import operator
from dataclasses import dataclass
from typing import Callable, Iterator

from services.engine.request import Request

RANK = operator.attrgetter("rank_key")
RankKey = float  # smaller first; promoted requests below 0 (see Scheduler._rank_key)
# Rank of an urgent request: URGENT_BASE + its TTFT deadline, above every promoted rank (PROMOTED_BASE
# + time, displacement.py) and below every policy key (>= 0), earliest deadline first.
URGENT_BASE = -1e12


@dataclass(frozen=True)
class TtftWindow:
    """When a request without a first token is urgent: from target_s - lead_s after its arrival until
    target_s after it (its TTFT deadline), see speculative_policy.py."""

    target_s: float  # TTFT target, seconds after arrival
    lead_s: float  # urgent this long before the target, seconds; 0 < lead_s <= target_s

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_s) and self.target_s > 0):
            raise ValueError(f"TTFT target must be a finite number of seconds > 0, got {self.target_s}")
        if not 0 < self.lead_s <= self.target_s:
            raise ValueError(f"TTFT promotion lead must be in (0, target {self.target_s}] s, got {self.lead_s}")


class WaitingQueue:
    """Sorted waiting requests; `rank_key_of` computes a request's key (promotion included; urgency is
    the queue's own, with a `ttft_window`)."""

    def __init__(self, rank_key_of: Callable[[Request], RankKey], ttft_window: TtftWindow | None = None) -> None:
        self._rank_key_of = rank_key_of
        self.ttft_window = ttft_window
        self._by_rank: list[Request] = []
        self._wait_order: dict[str, Request] = {}
        self._pending: list[tuple[float, int, Request]] = []  # (arrival, entry, r): may become urgent
        self._urgent: list[tuple[float, int, Request]] = []  # (TTFT deadline, entry, r): urgent now
        self._entry: dict[str, int] = {}  # request id -> its live entry number in one of the two heaps
        self._numbers = itertools.count()

    def __iter__(self) -> Iterator[Request]:
        return iter(self._by_rank)

    def __len__(self) -> int:
        return len(self._by_rank)

    def __bool__(self) -> bool:
        return bool(self._by_rank)

    def add(self, request: Request, now_s: float) -> None:
        """Enters the queue now (on arrival or after a preemption)."""
        request.wait_started_s = now_s
        request.rank_key = self._rank_key_of(request)
        bisect.insort(self._by_rank, request, key=RANK)
        if request.promoted_at_s is None:
            self._wait_order[request.request_id] = request
            if self.ttft_window is not None and request.first_token_time_s is None:
                number = next(self._numbers)
                self._entry[request.request_id] = number
                heapq.heappush(self._pending, (request.arrival_time_s, number, request))

    def head(self, count: int) -> list[Request]:
        """The `count` best waiting requests, best first."""
        return self._by_rank[:count]

    def is_urgent(self, request: Request) -> bool:
        """Whether the waiting request is in its TTFT window now (ranked by its deadline)."""
        return URGENT_BASE <= request.rank_key < 0.0 and request.request_id in self._entry

    def remove(self, request: Request) -> None:
        self._take(request)
        self._wait_order.pop(request.request_id, None)
        self._entry.pop(request.request_id, None)

    def pop_head(self, count: int) -> None:
        """Drops the `count` best requests (they were admitted, in rank order)."""
        for request in self._by_rank[:count]:
            self._wait_order.pop(request.request_id, None)
            self._entry.pop(request.request_id, None)
        del self._by_rank[:count]

    def rerank(self) -> None:
        """Recomputes every key (the cost model changed) but urgent ones (deadlines); the order mostly stays."""
        for request in self._by_rank:
            if not self.is_urgent(request):
                request.rank_key = self._rank_key_of(request)
        self._by_rank.sort(key=RANK)

    def update_urgency(self, now_s: float) -> None:
        """The two re-key events of TTFT-slack promotion due by now_s (module docstring): requests
        whose deadline has passed get their policy key back, then those within lead_s of it become
        urgent (a request already past its deadline when first seen here never does)."""
        window = self.ttft_window
        if window is None:
            return
        urgent, pending, entry = self._urgent, self._pending, self._entry
        while urgent and urgent[0][0] <= now_s:
            _, number, request = heapq.heappop(urgent)
            if entry.get(request.request_id) == number:
                del entry[request.request_id]
                self._rekey(request, self._rank_key_of(request))
        start_before_s = now_s - (window.target_s - window.lead_s)
        while pending and pending[0][0] <= start_before_s:
            arrival_s, number, request = heapq.heappop(pending)
            if entry.get(request.request_id) != number:
                continue  # admitted, removed or promoted since
            deadline_s = arrival_s + window.target_s
            if deadline_s <= now_s or request.first_token_time_s is not None:
                del entry[request.request_id]
                continue
            number = next(self._numbers)
            entry[request.request_id] = number
            heapq.heappush(urgent, (deadline_s, number, request))
            self._rekey(request, URGENT_BASE + deadline_s)

    def _rekey(self, request: Request, key: RankKey) -> None:
        self._take(request)
        request.rank_key = key
        bisect.insort(self._by_rank, request, key=RANK)

    def _take(self, request: Request) -> None:
        """Removes the request from the sorted list, found by its key (bisect), not by a scan."""
        by_rank = self._by_rank
        for index in range(bisect.bisect_left(by_rank, request.rank_key, key=RANK), len(by_rank)):
            if by_rank[index] is request:
                del by_rank[index]
                return
        raise ValueError(f"request {request.request_id!r} is not waiting")

    def promote_starved(self, now_s: float, max_wait_s: float) -> list[Request]:
        """Promotes every request that has waited max_wait_s; returns them, oldest first."""
        starved = []
        for request in self._wait_order.values():
            if now_s - request.wait_started_s < max_wait_s:
                break
            starved.append(request)
        for request in starved:
            self.remove(request)  # and out of TTFT-slack promotion: promoted ranks ahead of urgent
            request.promoted_at_s = now_s
            request.rank_key = self._rank_key_of(request)
            bisect.insort(self._by_rank, request, key=RANK)
        return starved
