"""Give one process a CPU core of its own and keep the others off it, as separate hosts would.

Why: on the 2-core development machine the load generator and the gateway, refusing hundreds of
requests per second under overload, take CPU from the engine's steps; in a deployment the gateway and
the engine are separate pods with their own CPU. Pinning emulates that, so an overload figure measures
admission and not the shared cores.

Invariant: Linux's sched_setaffinity acts on one thread, so every thread of a process is pinned
(threads started later inherit the mask of the thread that starts them).
"""

from __future__ import annotations

import os
import pathlib

_CPUS_AT_START = frozenset(os.sched_getaffinity(0))


def all_cpus() -> set[int]:
    """The CPUs this process could run on when it started (before any pinning of its own)."""
    return set(_CPUS_AT_START)


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` to `cpus`; a thread that exits meanwhile is skipped."""
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except ProcessLookupError:
            continue


def own_core_split() -> tuple[set[int], set[int]]:
    """(the owner's one CPU: the last, the others' CPUs: the rest). Needs >= 2 CPUs."""
    cpus = sorted(all_cpus())
    if len(cpus) < 2:
        raise RuntimeError("a core of its own needs at least 2 CPUs")
    return {cpus[-1]}, set(cpus[:-1])


def split_own_core(owner_pid: int, other_pids: list[int]) -> tuple[set[int], set[int]]:
    """`owner_pid` to its own core, `other_pids` to the rest (own_core_split); returns (owner's, others')."""
    own, rest = own_core_split()
    pin_process(owner_pid, own)
    for pid in other_pids:
        pin_process(pid, rest)
    return own, rest
