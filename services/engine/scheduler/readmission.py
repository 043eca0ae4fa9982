"""The readmission headroom: when a preempted request may take KV blocks again (scheduler.py, step 3).

A preempted request that is not promoted is admitted only if its blocks leave

    ceil(running requests x H / block size) blocks free        (room for every running request's next H tokens)

H = readmit_headroom_tokens: the scheduler limit's when set, else the policy's (alise and srpt-oracle 8,
fcfs and mlfq 0 = as soon as its own blocks fit, as vLLM). A promoted request needs no headroom, so the
starvation bound (max_wait_s) is unchanged; a fresh request needs none either (the headroom is against
readmission thrash, not admission).

Why: a victim readmitted as soon as its own blocks fit took the blocks the running batch was about to
grow into, and the next KV shortage evicted it again (under alise the cheapest victim is a just-readmitted
request predicted long): on sharegpt-heldout at 95% load with the shipped predictor, 88% of the requests
in alise's p99 normalized-latency tail had been preempted, ~6 times each, against 12% of all requests
(docs/benchmarks/sim/README.md, "Readmission headroom").
"""

from __future__ import annotations

from services.engine.request import Request
from services.engine.scheduler.limits import SchedulerLimits
from services.engine.scheduler.policy import SchedulingPolicy


def readmit_headroom_tokens(limits: SchedulerLimits, policy: SchedulingPolicy) -> int:
    """H: the limit's when set, else the policy's."""
    headroom = limits.readmit_headroom_tokens
    return policy.readmit_headroom_tokens if headroom is None else headroom


def headroom_blocks(request: Request, headroom_tokens: int, num_running: int, block_size: int) -> int:
    """Blocks that must stay free when `request` is admitted: the headroom for a preempted, unpromoted
    request, 0 for the others."""
    if not headroom_tokens or not request.num_preemptions or request.promoted_at_s is not None:
        return 0
    return -(-num_running * headroom_tokens // block_size)
