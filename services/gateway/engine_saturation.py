"""Whether an engine replica can take one more request, judged by the gateway without asking it.

Why: under overload almost every request is refused, and asking the engine makes each refusal pay
for tokenizing, an output-length prediction and an engine round trip on the gateway's one event
loop. At 20x capacity that work kept the gateway busy ~90% of the time (py-spy), and the refusals'
p99 grew to hundreds of milliseconds. Two figures the gateway already holds say "full" at once:

    queued work  the predicted work of this gateway's requests on the replica that have no
                 output token yet (engine_load), in seconds at the replica's measured rate: what a
                 new request would wait behind before its first token; or, when the replica's
                 running batch is full, the time until its next running request ends and frees a
                 place (engine_load.first_slot_wait_s), if that is longer. Over --max-queued-work-s no
                 request goes to it: the queue is bounded in time, not only in count, so requests
                 admitted at 20x capacity wait about as long as at full load, however many arrive.
                 The running batch's own work is not counted, so a slow machine still fills its
                 batch (0 = off; each gateway bounds its own requests).
    slot steps   the same full-batch slot wait counted in the replica's steps instead of seconds
                 (--max-queued-steps): with a bound of 1, a request is sent only when a place is free
                 or frees at the end of the step under way, so it waits at most the rest of that step,
                 as a request arriving at any load does. A bound in seconds (0.05 s: ~2 steps of the
                 tiny model on 2 cores) let requests admitted at 20x wait ~1.5 steps (engine queue p50
                 0.039 s against 0.010 s at 1x). Counted in steps, the bound follows the measured step
                 time; only the batch's places are counted (waiting requests take places first), not
                 the waiting requests' output work, which does not delay a first token while places
                 are free.
    a refusal    the replica refused a request because its queue is at a cap (EngineQueueFull). It
                 is taken as still full until a request of this gateway on it ends (a place freed)
                 or `max_age_s` passes (one health interval: other gateways' requests may have
                 ended, and the next stats poll tells).

Invariant: nothing here awaits; a check costs a few attribute reads per replica.
"""

from __future__ import annotations

import time

# How every refusal made here begins (benchmarks count them by it)
REFUSED_BEFORE_WORK = "overloaded, refused before any work"


class QueueFullMemory:
    """The last queue-full refusal of one replica, forgotten when a place frees or it ages out."""

    def __init__(self, address: str, max_age_s: float) -> None:
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self.address = address  # host:port of the replica, for the message
        self.max_age_s = max_age_s  # a refusal older than this says nothing any more, seconds
        self._refused_at_s: float | None = None  # time.monotonic() of the last refusal; None = none remembered
        self._reason = ""  # the engine's message of that refusal
        self.num_shed = 0  # requests refused by the gateway on the strength of it, since start

    def on_queue_full(self, reason: str, now_s: float | None = None) -> None:
        """The replica refused a request: its queue is at a cap."""
        self._refused_at_s = time.monotonic() if now_s is None else now_s
        self._reason = reason

    def on_place_freed(self) -> None:
        """A request of this gateway on the replica ended (finished, failed or cancelled)."""
        self._refused_at_s = None

    def full_reason(self, now_s: float | None = None) -> str | None:
        """Why the replica is taken as full now, or None when it may have room."""
        if self._refused_at_s is None:
            return None
        age_s = (time.monotonic() if now_s is None else now_s) - self._refused_at_s
        if age_s > self.max_age_s:
            self._refused_at_s = None
            return None
        return (
            f"engine {self.address} refused a request {age_s * 1000:.0f} ms ago ({self._reason!r}) and none of "
            "this gateway's requests on it has ended since"
        )


def queued_work_reason(
    address: str, queued_work_s: float, max_queued_work_s: float, slot_wait_s: float = 0.0
) -> str | None:
    """Why a new request's predicted wait for its first token shuts the replica, or None (also when the
    bound is off: 0). The wait is the larger of the work waiting to start (queued_work_s) and the time
    until the replica's full batch frees a place (slot_wait_s, engine_load.first_slot_wait_s)."""
    if max_queued_work_s <= 0 or max(queued_work_s, slot_wait_s) <= max_queued_work_s:
        return None
    if slot_wait_s > queued_work_s:
        return (
            f"engine {address}'s running batch is full and its next request ends in {slot_wait_s:.2f} s (predicted), "
            f"over the limit of {max_queued_work_s:g} s of wait before a first token (--max-queued-work-s)"
        )
    return (
        f"engine {address} has {queued_work_s:.2f} s of predicted work waiting to start, over the limit of "
        f"{max_queued_work_s:g} s (--max-queued-work-s)"
    )


def queued_steps_reason(address: str, slot_wait_steps: float, max_queued_steps: float, step_s: float) -> str | None:
    """Why the predicted full-batch slot wait, in the replica's steps, shuts it (engine_load.first_slot_wait_steps),
    or None (also when the bound is off: 0). step_s = the full batch's step at the replica's rate (for the message)."""
    if max_queued_steps <= 0 or slot_wait_steps <= max_queued_steps:
        return None
    return (
        f"engine {address}'s running batch is full and no place frees within {max_queued_steps:g} step(s): the next "
        f"in {slot_wait_steps:g} steps (~{slot_wait_steps * step_s:.3f} s, predicted) (--max-queued-steps)"
    )
