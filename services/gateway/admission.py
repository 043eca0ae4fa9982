"""The gateway's admission limit: at most N generations and B request bytes in flight, the next one
rejected at once.

Why here as well as in the engine: the gateway holds per-request state before any engine sees the
request and for as long as it waits there (the received request, its tokenization, a prediction
call, the client's stream and the engine call, each with gRPC core's own per-call buffers), so an
unbounded gateway turns overload into memory growth and timeouts. Measured (a starved backlog:
open-loop arrivals above capacity with 300 s deadlines, tiny model): the gateway's RSS grows by
~70-80 KiB per generation in flight, almost all of it outside the Python heap (tracemalloc saw
+0.6 MiB for a backlog that added 40 MiB: gRPC core's server and client calls), and glibc keeps most
of it after the backlog drains, so the RSS follows the highest backlog ever held. Both limits bound
it: the count bounds the per-call part, the bytes the part that grows with prompt size (a prompt is
held as text, as Python token ids at ~36 bytes each, and as the engine request). A request over
either limit gets RESOURCE_EXHAUSTED (HTTP 429) in well under a millisecond, with a message saying
which limit; it is checked before tokenizing, so a refusal costs no work.

Invariant: `num_in_flight` and `num_in_flight_bytes` equal the sums over the generations that
entered and have not left; `admit()` is a context manager, so every exit path (finish, error,
client cancel) gives the place and the bytes back.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from services.common.errors import Overloaded
from services.common.refusal import RefusalReason


class InFlightLimit:
    """Counts generations and their request bytes in flight on this gateway (one asyncio loop: no lock)."""

    def __init__(self, max_in_flight: int, max_in_flight_bytes: int | None = None) -> None:
        if max_in_flight <= 0:
            raise ValueError(f"max_in_flight must be > 0, got {max_in_flight}")
        if max_in_flight_bytes is not None and max_in_flight_bytes <= 0:
            raise ValueError(f"max_in_flight_bytes must be > 0, got {max_in_flight_bytes}")
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes  # None = no bound on bytes
        self.num_in_flight = 0
        self.num_in_flight_bytes = 0  # request bytes of the generations in flight
        self.num_rejected = 0  # since start, both limits

    @contextlib.contextmanager
    def admit(self, num_request_bytes: int = 0) -> Iterator[None]:
        """Holds one place and `num_request_bytes` for the duration of the block; raises Overloaded when
        either limit would be passed. A single request larger than the byte limit is still admitted
        when nothing else is in flight (its own size is bounded by the prompt-size check)."""
        self._check(num_request_bytes)
        self.num_in_flight += 1
        self.num_in_flight_bytes += num_request_bytes
        try:
            yield
        finally:
            self.num_in_flight -= 1
            self.num_in_flight_bytes -= num_request_bytes

    def _check(self, num_request_bytes: int) -> None:
        if self.num_in_flight >= self.max_in_flight:
            self.num_rejected += 1
            raise Overloaded(
                f"gateway overloaded: {self.num_in_flight} requests in flight, the limit is "
                f"{self.max_in_flight} (--max-in-flight-requests); retry later",
                refusal_reason=RefusalReason.QUEUE_FULL,
            )
        limit = self.max_in_flight_bytes
        if limit is not None and self.num_in_flight and self.num_in_flight_bytes + num_request_bytes > limit:
            self.num_rejected += 1
            raise Overloaded(
                f"gateway overloaded: {self.num_in_flight_bytes} request bytes in flight + {num_request_bytes} "
                f"would exceed the limit of {limit} (--max-in-flight-request-bytes); retry later",
                refusal_reason=RefusalReason.QUEUE_FULL,
            )
