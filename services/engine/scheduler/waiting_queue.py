"""The waiting queue: kept sorted by rank, so a step looks only at its head.

Sorting 1,000 waiting requests every step would cost more than the whole step budget, so each
request's rank key is computed when it enters the queue and cached on it (`request.rank_key`). This
is valid because a policy's key for a waiting request does not change while it waits (see the
SchedulingPolicy invariant); when the cost model is refitted, `rerank` recomputes every key.

Starvation promotion needs the requests in the order they started waiting: `_wait_order` is an
insertion-ordered dict of the unpromoted ones, so the starved are always a prefix of it.

    waiting (by rank):      [ promoted (key < 0) ... | normal (key >= 0), best first ... ]
    _wait_order (by time):  { oldest wait, ..., newest wait }   (unpromoted only)
"""

from __future__ import annotations

import bisect
import operator
from typing import Callable, Iterator

from services.engine.request import Request

RANK = operator.attrgetter("rank_key")
RankKey = float  # smaller first; promoted requests below 0 (see Scheduler._rank_key)


class WaitingQueue:
    """Sorted waiting requests; `rank_key_of` computes a request's key (promotion included)."""

    def __init__(self, rank_key_of: Callable[[Request], RankKey]) -> None:
        self._rank_key_of = rank_key_of
        self._by_rank: list[Request] = []
        self._wait_order: dict[str, Request] = {}

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

    def head(self, count: int) -> list[Request]:
        """The `count` best waiting requests, best first."""
        return self._by_rank[:count]

    def remove(self, request: Request) -> None:
        self._by_rank.remove(request)
        self._wait_order.pop(request.request_id, None)

    def pop_head(self, count: int) -> None:
        """Drops the `count` best requests (they were admitted, in rank order)."""
        for request in self._by_rank[:count]:
            self._wait_order.pop(request.request_id, None)
        del self._by_rank[:count]

    def rerank(self) -> None:
        """Recomputes every key (the cost model changed); the order mostly stays."""
        for request in self._by_rank:
            request.rank_key = self._rank_key_of(request)
        self._by_rank.sort(key=RANK)

    def promote_starved(self, now_s: float, max_wait_s: float) -> list[Request]:
        """Promotes every request that has waited max_wait_s; returns them, oldest first."""
        starved = []
        for request in self._wait_order.values():
            if now_s - request.wait_started_s < max_wait_s:
                break
            starved.append(request)
        for request in starved:
            self.remove(request)
            request.promoted_at_s = now_s
            request.rank_key = self._rank_key_of(request)
            bisect.insort(self._by_rank, request, key=RANK)
        return starved
