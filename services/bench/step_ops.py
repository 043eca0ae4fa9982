"""Counting and timing the operators a step dispatches, for `alise bench step` and the fusion tests.

Both are TorchDispatchModes, so they see every aten operator call below Python (a composite such
as F.rms_norm counts once when it reaches the dispatcher as one operator). View and metadata
operators (view, slice, transpose, ...) launch nothing on a GPU and are counted apart.

Calls made inside the attention backend's write() and attend() are attributed to "attention": on
CUDA each of those is one kernel launch (the varlen kernel, the cache-write kernel); on CPU the
torch reference issues many operators, which say nothing about the GPU path.
"""

from __future__ import annotations

import collections
import time
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

VIEW_OPS = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "slice",
        "select",
        "t",
        "transpose",
        "permute",
        "unsqueeze",
        "squeeze",
        "expand",
        "as_strided",
        "alias",
        "detach",
        "unflatten",
        "split",
        "split_with_sizes",
        "chunk",
        "unbind",
        "lift_fresh",
        "_reshape_alias",
        "narrow",
        "view_as",
        "unfold",
        "diagonal",
        "movedim",
    }
)


def operator_name(func) -> str:
    """aten.addmm.default -> addmm."""
    return func.__name__.split(".")[0]


class OperatorCounter(TorchDispatchMode):
    """Counts operator calls by bucket: 'decoder' or 'attention' (set by AttentionProbe), views apart."""

    def __init__(self) -> None:
        super().__init__()
        self.bucket = "decoder"
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = operator_name(func)
        self.calls[(self.bucket, "view" if name in VIEW_OPS else name)] += 1
        return func(*args, **(kwargs or {}))

    def count(self, bucket: str, *, views: bool = False) -> int:
        return sum(n for (b, name), n in self.calls.items() if b == bucket and (views or name != "view"))

    def by_operator(self, bucket: str) -> dict[str, int]:
        return dict(sorted(((name, n) for (b, name), n in self.calls.items() if b == bucket), key=lambda x: -x[1]))


class OperatorTimer(TorchDispatchMode):
    """Thread CPU time spent inside operators (on CPU, kernels run in the calling thread), by bucket."""

    def __init__(self) -> None:
        super().__init__()
        self.bucket = "decoder"
        self.inside_ns: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        started = time.thread_time_ns()
        result = func(*args, **(kwargs or {}))
        self.inside_ns[self.bucket] += time.thread_time_ns() - started
        self.calls[self.bucket] += 1
        return result


def clock_cost_ns(num_calls: int = 20000) -> float:
    """Thread ns of one time.thread_time_ns() call: about what each operator's measured inside time
    over-counts (the clock's own cost falls between its two readings)."""
    started = time.thread_time_ns()
    for _ in range(num_calls):
        time.thread_time_ns()
    return (time.thread_time_ns() - started) / num_calls


class AttentionProbe:
    """Wraps an attention backend: marks the mode's bucket and sums the thread time of write/attend."""

    def __init__(self, backend, mode: OperatorCounter | OperatorTimer | None = None) -> None:
        self.backend, self.mode = backend, mode
        self.kind = backend.kind
        self.wall_ns = 0

    def prepare(self, metadata):
        return self.backend.prepare(metadata)

    @contextmanager
    def _inside(self):
        started = time.thread_time_ns()
        if self.mode is not None:
            self.mode.bucket = "attention"
        try:
            yield
        finally:
            if self.mode is not None:
                self.mode.bucket = "decoder"
            self.wall_ns += time.thread_time_ns() - started

    def write(self, cache, layer, slot_mapping, key, value) -> None:
        with self._inside():
            self.backend.write(cache, layer, slot_mapping, key, value)

    def attend(self, query, cache, layer, metadata, scale) -> torch.Tensor:
        with self._inside():
            return self.backend.attend(query, cache, layer, metadata, scale)
