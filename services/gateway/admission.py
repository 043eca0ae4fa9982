"""The gateway's admission limit: at most N generations in flight, the next one rejected at once.

Why here as well as in the engine: the gateway holds per-request state before any engine sees the
request (the received prompt, its tokenization, a prediction call, the client's stream), so an
unbounded gateway turns overload into memory growth and timeouts. A request over the limit gets
RESOURCE_EXHAUSTED (HTTP 429) in well under a millisecond, with a message saying which limit.

Invariant: `num_in_flight` equals the generations that entered and have not left; `admit()` is a
context manager, so every exit path (finish, error, client cancel) gives the place back.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from services.common.errors import Overloaded
from services.common.refusal import RefusalReason


class InFlightLimit:
    """Counts generations in flight on this gateway (one asyncio loop: no lock needed)."""

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight <= 0:
            raise ValueError(f"max_in_flight must be > 0, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.num_in_flight = 0
        self.num_rejected = 0  # since start

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Holds one place for the duration of the block; raises Overloaded when none is free."""
        if self.num_in_flight >= self.max_in_flight:
            self.num_rejected += 1
            raise Overloaded(
                f"gateway overloaded: {self.num_in_flight} requests in flight, the limit is "
                f"{self.max_in_flight} (--max-in-flight-requests); retry later",
                refusal_reason=RefusalReason.QUEUE_FULL,
            )
        self.num_in_flight += 1
        try:
            yield
        finally:
            self.num_in_flight -= 1
