"""Why a running request lost its seat: the label of the engine's preemption counters.

The two causes call for different remedies, so operators need them apart: KV shortage means the
pool is too small for the batch (more KV memory, a smaller max_num_seqs, or int8 KV), displacement
means the policy judged a waiting request clearly shorter (the price of shortest-first; fcfs never
displaces).
"""

from __future__ import annotations

import enum


class PreemptionCause(enum.Enum):
    """What made the scheduler preempt a running request."""

    KV_SHORTAGE = "kv_shortage"  # a running request needed blocks the pool no longer had
    DISPLACEMENT = "displacement"  # the policy ranked a waiting request clearly better (alise, mlfq)
