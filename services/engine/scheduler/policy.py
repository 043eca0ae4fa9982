"""Scheduling policies behind one interface, so that they can be compared on identical work.

A policy only orders requests; the Scheduler owns the mechanics (token budget, KV blocks,
preemption). The speculative (ALISE) policy and the baselines plug in here.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from services.engine.request import Request


class SchedulingPolicy(Protocol):
    """Orders requests; lower sort key = served first, preempted last."""

    name: str

    def priority_key(self, request: Request, now_s: float) -> tuple[float, ...]:
        """Sort key of a request at time now_s (smaller runs first)."""
        ...


class FcfsPolicy:
    """First come, first served: the vLLM default. Preempted requests keep their arrival time,
    so they resume ahead of later arrivals; the newest running request is preempted first."""

    name = "fcfs"

    def priority_key(self, request: Request, now_s: float) -> tuple[float, ...]:
        return (request.arrival_time_s,)


POLICIES = {FcfsPolicy.name: FcfsPolicy}


def make_policy(name: str) -> SchedulingPolicy:
    """Builds a policy by name; ValueError lists the known ones."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r}; known: {sorted(POLICIES)}") from None


def sorted_by_priority(
    policy: SchedulingPolicy, requests: Sequence[Request], now_s: float
) -> list[Request]:
    """Requests in service order (stable for equal keys)."""
    return sorted(requests, key=lambda request: policy.priority_key(request, now_s))
