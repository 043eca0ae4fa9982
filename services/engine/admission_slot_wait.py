"""Admission by the wait for a place in the running batch: admit only what can start within N steps.

Why: at 20x capacity the gateway sends a request when its ledger says a place frees within
--max-queued-work-s (0.05 s, about two steps of the tiny model on 2 cores), so some requests admitted
at 20x waited two steps for a place where at 1x they wait the rest of the step under way (the
engine's step trace, `python -m services.bench.overload_ttft_bench`: steps waited p99 2 in 7 of 11
20x levels, 1x: 2 of 11). The gateway cannot do better: it learns that a place freed when the
finishing request's last token reaches it, after the engine could use it. The engine knows its
running batch, so it refuses at once (RESOURCE_EXHAUSTED, QUEUE_FULL: any request would be refused
now) a request that would not find a place within `max_queue_wait_steps` steps, and the gateway sheds
the next ones before any work until one of its requests there ends (engine_saturation). With 1 behind
the gateway's bound, steps waited p99 was 1 at 20x as at 1x; the p99 TTFT in seconds did not move,
being set there by the steps' duration (README, Reliability). Alone, without the gateway's bound,
requests of one fixed length filled the batch in cohorts: off by default.

The figures come from the queue profile (admission_control.QueueProfile: taken between steps, at
most every PROFILE_INTERVAL_S) moved on by the steps the engine made since (its step counter, read
live) and the live requests admitted since (this thread's own count):

    step under way: the (since + 1)-th after the profile
    running at the profile, still live:  left = remaining tokens at the profile - since
                                         (its place frees at the end of the left-th step from now;
                                          left <= 0: free now)
    places free now                    = max_num_seqs - those with left > 0
    waiting ahead                      = live requests not running at the profile (waiting then, or
                                         admitted since)
    wait (steps)                       = the (waiting ahead + 1)-th earliest place: 0 = free now,
                                         1 = frees at the end of the step under way

A waiting request is taken to hold the place it gets for longer than the bound (true for any request
longer than N tokens: the bound is meant as a step or two), so only the order of the ends matters.
Running requests free their place after their predicted remaining tokens: exact for a known length
(ignore_eos, max_tokens), an estimate otherwise; a batch limited by KV blocks before max_num_seqs is
not seen as full here (the KV check in the scheduler still holds it back). The check never refuses
while the batch has room for every live request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class RunningPlaces:
    """The running batch at the queue profile: who holds a place and for how many more steps."""

    running: tuple[tuple[str, float], ...]  # (request id, predicted remaining tokens) per running request
    max_num_seqs: int  # places in the running batch (0: unknown, the check is skipped)
    num_steps: int  # steps the engine had completed when the profile was taken
    steps_now: Callable[[], int]  # the engine's completed steps now (read live, a benign race)


EMPTY_PLACES = RunningPlaces((), 0, 0, lambda: 0)


def steps_until_place(places: RunningPlaces, num_live: int, is_live: Callable[[str], bool]) -> float:
    """Steps until a place is free for one more request (see the module docstring); inf when more requests
    wait ahead than the batch has places. num_live = live requests on this engine, is_live(id) = whether one is."""
    if places.max_num_seqs <= 0:
        return 0.0
    since = max(0, places.steps_now() - places.num_steps)
    num_running_live = 0
    held: list[float] = []
    for request_id, remaining_tokens in places.running:
        if is_live(request_id):
            num_running_live += 1
            if remaining_tokens - since > 0:
                held.append(remaining_tokens - since)
    num_waiting_ahead = max(0, num_live - num_running_live)
    ends = [0.0] * max(0, places.max_num_seqs - len(held)) + sorted(held)
    return ends[num_waiting_ahead] if num_waiting_ahead < len(ends) else math.inf


def queue_wait_refusal(wait_steps: float, max_wait_steps: float, step_s: float) -> str | None:
    """The refusal message when the wait exceeds the bound (0 = off), else None; step_s for the message."""
    if max_wait_steps <= 0 or wait_steps <= max_wait_steps:
        return None
    when = "no place within one batch" if math.isinf(wait_steps) else f"the next place in {wait_steps:g} steps"
    return (
        f"engine busy: its running batch is full and no place frees for a new request within {max_wait_steps:g} "
        f"step(s) ({when}, {step_s * 1000:.0f} ms per step lately) (--max-queue-wait-steps); refused at once so "
        "that admitted requests start without waiting; retry later"
    )
