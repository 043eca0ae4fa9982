"""Which engine replica gets the next request: the routing policies, as pure functions.

    least-work   the replica with the least predicted outstanding work in seconds (engine stats +
                 this gateway's in-flight ledger, see engine_load); ties go to the one with fewer
                 in-flight requests, then round-robin. What only alise knows: a replica running one
                 2,000-token story is busier than one running ten 20-token answers.
    round-robin  the next replica in address order, whatever its load (the baseline it is
                 compared with in `python -m services.cli.bench_replicas`).

Both see only routable candidates; health filtering happens before (engine_pool).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence


class RoutingPolicy(enum.StrEnum):
    """How a request picks its engine replica; the values are the --engine-routing choices."""

    LEAST_WORK = "least-work"
    ROUND_ROBIN = "round-robin"


ROUTING_POLICIES = tuple(policy.value for policy in RoutingPolicy)  # argparse choices, in declaration order
# Two work figures closer than this are a tie (float noise of a sum of rates), seconds.
WORK_TIE_S = 1e-9


@dataclass(frozen=True)
class ReplicaLoad:
    """What a policy knows of one candidate replica."""

    address: str  # host:port of the replica (candidates are in address order)
    predicted_work_s: float  # predicted outstanding work, seconds (>= 0)
    num_in_flight: int  # this gateway's requests on it not yet finished


def pick_replica(policy: RoutingPolicy, candidates: Sequence[ReplicaLoad], turn: int) -> ReplicaLoad:
    """The candidate for the next request; `turn` counts the pool's routing decisions so far.

    Raises ValueError on an empty candidate list (the caller reports "no replica available").
    """
    if not candidates:
        raise ValueError("no candidate replica")
    if policy == RoutingPolicy.ROUND_ROBIN:
        return candidates[turn % len(candidates)]
    return _least_work(candidates, turn)


def _least_work(candidates: Sequence[ReplicaLoad], turn: int) -> ReplicaLoad:
    """Least work; among ties (within WORK_TIE_S) fewest in flight; among those, rotate by turn."""
    least_s = min(load.predicted_work_s for load in candidates)
    tied = [load for load in candidates if load.predicted_work_s - least_s <= WORK_TIE_S]
    fewest = min(load.num_in_flight for load in tied)
    tied = [load for load in tied if load.num_in_flight == fewest]
    return tied[turn % len(tied)]
