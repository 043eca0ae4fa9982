"""Scheduling policies behind one interface, so that they are compared on identical work.

A policy only ranks requests and says when a waiting request may displace a running one; the
Scheduler owns the mechanics (token budget, KV blocks, preemption, starvation promotion), so every
policy gets the same chunked prefill and the same budget.

    fcfs         arrival order; never displaces a running request (vLLM's default)
    alise        shortest predicted remaining time, re-estimated every step (speculative_policy.py)
    srpt-oracle  the same with the true remaining length (benchmarks only)
    mlfq         FastServe-like skip-join multi-level feedback queue (mlfq_policy.py)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Callable, Protocol

from services.engine.request import Request
from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.scheduler.waiting_queue import TtftWindow

# One float, smaller runs first; >= 0 (the scheduler puts promoted requests below 0). A float, not a
# tuple: sorting the running batch every step compares keys thousands of times. Ties keep queue order.
PriorityKey = float


class PolicyName(StrEnum):
    """The key of each policy in the registry (`make_policy`); a member's value is its
    --scheduler-policy name. Each policy class names its member; _registry() checks the two agree."""

    ALISE = "alise"
    FCFS = "fcfs"
    MLFQ = "mlfq"
    SRPT_ORACLE = "srpt-oracle"


class SchedulingPolicy(Protocol):
    """Ranks requests. Invariant the scheduler relies on: the key of a request that is waiting does
    not change while it waits, except when the cost model's `version` changes (the scheduler then
    re-ranks the waiting queue), so the queue is kept sorted instead of re-sorted every step.

    Policies subclass this explicitly and inherit the defaults of the optional members
    (`cost_model`, `priority_keys`), so the scheduler calls them without probing with getattr."""

    name: PolicyName
    preempts_for_waiting: bool  # may a better-ranked waiting request displace a running one?
    # The cost model the policy ranks with; the scheduler shares it (None: the policy needs none)
    cost_model: OnlineStepCostModel | None = None
    # TTFT-slack promotion of waiting requests (waiting_queue.py; None: the policy's order alone)
    ttft_window: TtftWindow | None = None
    # A preempted request is readmitted only while this many tokens per running request stay free
    # (readmission.py); 0: as soon as its own blocks fit (vLLM's behaviour, fcfs and mlfq)
    readmit_headroom_tokens: int = 0

    def priority_key(self, request: Request) -> PriorityKey:
        """Rank of a request now (smaller = served first, preempted last)."""
        ...

    def priority_keys(self, requests: list[Request]) -> list[PriorityKey]:
        """priority_key of many requests (the running batch, every step); a policy may override it
        with a faster batch form that returns the same keys."""
        return [self.priority_key(request) for request in requests]

    def displaces(self, waiting: Request, running: Request, victim_cost_s: float) -> bool:
        """Whether `waiting` is better enough than `running` to preempt it (hysteresis lives here);
        victim_cost_s is what preempting `running` costs: recomputing its KV, or swapping it out and
        back when the eviction handler would save it more cheaply."""
        ...

    def requeue_key(self, running: Request, now_s: float, victim_cost_s: float) -> PriorityKey:
        """The waiting-queue key `running` would get if it were preempted now (victim_cost_s as in
        displaces): the scheduler estimates from it how long the victim would wait to resume
        (displacement.py's deferral bound). The default suits keys that do not depend on when the
        request starts waiting."""
        return self.priority_key(running)


class FcfsPolicy(SchedulingPolicy):
    """First come, first served: the vLLM default. Preempted requests keep their arrival time, so
    they resume ahead of later arrivals; the newest running request is preempted first when KV runs
    out; a waiting request never displaces a running one."""

    name = PolicyName.FCFS
    preempts_for_waiting = False

    def __init__(self, cost_model: OnlineStepCostModel) -> None:
        del cost_model  # arrival order needs no cost estimates: self.cost_model stays None

    def priority_key(self, request: Request) -> PriorityKey:
        return request.arrival_time_s

    def displaces(self, waiting: Request, running: Request, victim_cost_s: float) -> bool:
        return False


def _registry() -> dict[PolicyName, Callable[[OnlineStepCostModel], SchedulingPolicy]]:
    """Every policy class by its name (imported here: those modules import this one)."""
    from services.engine.scheduler.mlfq_policy import MlfqPolicy
    from services.engine.scheduler.speculative_policy import AlisePolicy, SrptOraclePolicy

    classes: tuple[type[SchedulingPolicy], ...] = (AlisePolicy, FcfsPolicy, MlfqPolicy, SrptOraclePolicy)
    registry: dict[PolicyName, Callable[[OnlineStepCostModel], SchedulingPolicy]] = {cls.name: cls for cls in classes}
    if set(registry) != set(PolicyName) or len(registry) != len(classes):
        raise RuntimeError(f"policy classes {sorted(registry)} do not match PolicyName {list(PolicyName)}")
    return registry


POLICY_NAMES: tuple[str, ...] = tuple(name.value for name in PolicyName)  # the registry's keys, in order
DEFAULT_POLICY = PolicyName.ALISE


def make_policy(name: str, cost_model: OnlineStepCostModel | None = None) -> SchedulingPolicy:
    """Builds a policy by name (a PolicyName or its value); ValueError lists the known ones."""
    factories = _registry()
    if name not in factories:
        raise ValueError(f"unknown scheduling policy {name!r}; known: {sorted(POLICY_NAMES)}")
    return factories[PolicyName(name)](cost_model or OnlineStepCostModel())
