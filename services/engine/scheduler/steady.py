"""The steady decode step: every running request decodes one token, scheduled and updated as columns.

In the common step of a busy engine the running set is what it was one step ago, each request feeding
back its last sampled token. The general path builds a ScheduledChunk and a StepResult object per
request and walks them one by one in Python; here the decodes are one DecodeColumns (output.py) and
the per-request work is C-level map/zip over the requests (one two-line loop sets the computed
counts: a specialised attribute store beats map(setattr)) plus numpy over their counts:

    schedule: check (no drafts; every running request has num_tokens - num_computed_tokens == 1),
              allocate a block where a decode's position starts one, columns = computed + 1
    update:   num_computed_tokens set, tokens appended, finish checks on arrays; the few flagged
              requests (EOS, max_tokens, model length) go through the scheduler's own checks

The outcome is identical to the general path (same chunks in the same batch order, same block
allocations in the same order, same finishes): when anything differs (a prefill among the running,
a draft, a block the pool cannot give, a status change during the step) the caller falls back to it.
A block allocation that succeeds is idempotent, so the fallback after a failed one repeats the same
allocations and fails at the same request.

Counts are read from the requests (three map()s) unless the last update was steady over exactly the
same running list (identity): then they are the columns that update left, and only the draft check
reads the requests.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Callable, Mapping, overload

import numpy as np

from services.engine.request import FinishReason, Request
from services.engine.scheduler.output import DecodeColumns, SampledTokens, ScheduledChunk, SchedulerOutput, StepResult

if TYPE_CHECKING:
    from services.engine.scheduler.scheduler import Scheduler

# Below this many running requests the general path is cheaper: the columns' dozen numpy calls cost about
# 0.03 ms whatever the batch, the general path about 1.5 us per request (bench step: 1 decode 0.30 -> 0.31 ms,
# 64 decodes 0.50 -> 0.34 ms with columns at every size).
MIN_COLUMN_DECODES = 32
_num_computed = attrgetter("num_computed_tokens")
_output_ids = attrgetter("output_token_ids")
_prompt_ids = attrgetter("prompt_token_ids")
_draft_slots = attrgetter("num_draft_slots")
_request_id = attrgetter("request_id")
_first_scheduled = attrgetter("first_scheduled_time_s")
_max_tokens = attrgetter("sampling.max_tokens")
_new_tuple: Callable[..., StepResult] = tuple.__new__


class StepResults(Sequence[StepResult]):
    """What Scheduler.update returns: the steady decode columns' results as columns (request ids, one
    token each, finish reasons where the step finished any) followed by the other requests' StepResults
    (`others`, appended by Scheduler.update). Reads as a sequence of StepResult, the columns' built on
    first read; the engine loop reads the columns (engine_loop.py), so a steady step builds no object per
    request on the engine thread. Read it after update() returned: appending invalidates what was built."""

    def __init__(
        self,
        decode_ids: list[str] | None = None,
        decode_tokens: list[int] | None = None,
        decode_reasons: list[FinishReason | None] | None = None,
    ) -> None:
        self.decode_ids: list[str] = decode_ids if decode_ids is not None else []
        self.decode_tokens: list[int] = decode_tokens if decode_tokens is not None else []
        self.decode_reasons = decode_reasons  # None: no decode column finished this step
        self.others: list[StepResult] = []
        self.append: Callable[[StepResult], None] = self.others.append
        self._built: list[StepResult] | None = None

    def as_list(self) -> list[StepResult]:
        """Every result as a StepResult, the columns' first (batch order)."""
        built = self._built
        if built is None or len(built) != len(self):
            reasons: Sequence[FinishReason | None] | repeat[None] = self.decode_reasons or repeat(None)
            new_token_ids = [[token] for token in self.decode_tokens]
            built = list(map(_new_tuple, repeat(StepResult), zip(self.decode_ids, new_token_ids, reasons)))
            built += self.others
            self._built = built
        return built

    def __len__(self) -> int:
        return len(self.decode_ids) + len(self.others)

    @overload
    def __getitem__(self, index: int) -> StepResult: ...

    @overload
    def __getitem__(self, index: slice) -> list[StepResult]: ...

    def __getitem__(self, index: int | slice) -> StepResult | list[StepResult]:
        return self.as_list()[index]

    def __iter__(self) -> Iterator[StepResult]:
        return iter(self.as_list())

    def __eq__(self, other: object) -> bool:
        return self.as_list() == list(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StepResults({self.as_list()!r})"


@dataclass(frozen=True)
class _RunningSet:
    """What stays constant while the same requests keep decoding: the requests (a copy of the running
    list), their ids, their output lists (appended in place) and max_tokens."""

    requests: list[Request]
    request_ids: list[str]
    output_lists: list[list[int]]
    max_tokens: np.ndarray


@dataclass(frozen=True)
class _AfterUpdate:
    """The running set's counts after a steady update: num_computed_tokens and output counts."""

    running: _RunningSet
    num_computed: np.ndarray
    num_output: np.ndarray


class SteadyDecodes:
    """One scheduler's steady-step state; engine thread only."""

    def __init__(self, block_size: int, min_decodes: int = MIN_COLUMN_DECODES) -> None:
        self.block_size = block_size
        self.min_decodes = min_decodes  # fewer running requests: the general path
        self._after: _AfterUpdate | None = None  # set by a steady update, taken by the next schedule
        # The columns of the last steady schedule, their running set and the scheduler's status-change
        # count then: update() takes the column path only for these columns with no status change since.
        self._pending: tuple[DecodeColumns, _RunningSet, int] | None = None

    def schedule(self, scheduler: Scheduler) -> DecodeColumns | None:
        """Every running request's decode as columns, its blocks allocated; None: take the general path
        (nothing has changed then: the opened blocks are allocated all or nothing)."""
        running = scheduler.running
        after, self._after, self._pending = self._after, None, None
        if len(running) < self.min_decodes or (scheduler.drafts_possible and any(map(_draft_slots, running))):
            return None
        if after is not None and after.running.requests == running:  # identity comparisons, in C
            running_set, computed, num_output = after.running, after.num_computed, after.num_output
        else:
            computed = np.array(list(map(_num_computed, running)), dtype=np.int64)
            num_output = np.array(list(map(len, map(_output_ids, running))), dtype=np.int64)
            num_prompt = np.array(list(map(len, map(_prompt_ids, running))), dtype=np.int64)
            if not (num_prompt + num_output - computed == 1).all() or None in map(_first_scheduled, running):
                return None
            running_set = _RunningSet(
                list(running),
                list(map(_request_id, running)),
                list(map(_output_ids, running)),
                np.array(list(map(_max_tokens, running)), dtype=np.int64),
            )
        seq_lens = computed + 1
        request_ids = running_set.request_ids
        opening = np.flatnonzero(computed % self.block_size == 0)  # their positions start a block
        if len(opening) and not scheduler.kv.allocate_slots_for_all(
            [request_ids[index] for index in opening.tolist()], seq_lens[opening].tolist()
        ):
            return None  # KV short: nothing allocated, the general path preempts (make_room) as it always did
        columns = DecodeColumns(
            running_set.requests, request_ids, seq_lens, seq_lens.tolist(), num_output, scheduler.num_status_changes
        )
        self._pending = (columns, running_set, scheduler.num_status_changes)
        return columns

    def update_output(
        self, scheduler: Scheduler, output: SchedulerOutput, sampled: Mapping[str, int], now_s: float
    ) -> tuple[StepResults, list[ScheduledChunk]]:
        """(results of the decode columns, the chunks Scheduler.update still walks): the columns at once
        when they are this path's, else every chunk is walked."""
        decodes = output.decodes
        if decodes is None:
            return StepResults(), output.chunks
        if isinstance(sampled, SampledTokens) and sampled.decode_ids is decodes.request_ids:
            tokens = sampled.decode_tokens
        else:
            tokens = [sampled[request_id] for request_id in decodes.request_ids]
        results = self.update(scheduler, decodes, tokens, now_s)
        return (results, output.tail) if results is not None else (StepResults(), output.chunks)

    def update(
        self, scheduler: Scheduler, columns: DecodeColumns, tokens: list[int], now_s: float
    ) -> StepResults | None:
        """Applies the decodes' sampled tokens (in column order); None: not this path's columns, or a
        request changed status while the step ran (the caller then walks them one by one)."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] is not columns or pending[2] != scheduler.num_status_changes:
            return None
        running_set, requests = pending[1], columns.requests
        for request, seq_len in zip(requests, columns.seq_lens_list):  # a specialised STORE_ATTR beats map(setattr)
            request.num_computed_tokens = seq_len
        deque(map(list.append, running_set.output_lists, tokens), 0)
        num_output = columns.num_output_tokens + 1
        if not columns.num_output_tokens.all():  # some request's first token
            for index in np.flatnonzero(columns.num_output_tokens == 0).tolist():
                if requests[index].first_token_time_s is None:
                    requests[index].first_token_time_s = now_s
        flagged = (num_output >= running_set.max_tokens) | (columns.seq_lens >= scheduler.limits.max_model_len - 1)
        eos_token_id = scheduler.eos_token_id
        if eos_token_id is not None and eos_token_id in tokens:  # a C-level scan; the array only when it is there
            flagged |= np.array(tokens, dtype=np.int64) == eos_token_id
        reasons = None
        if flagged.any():
            reasons = self._finish_flagged(scheduler, requests, tokens, np.flatnonzero(flagged).tolist())
        else:
            self._after = _AfterUpdate(running_set, columns.seq_lens, num_output)
        return StepResults(columns.request_ids, tokens, reasons)

    @staticmethod
    def _finish_flagged(
        scheduler: Scheduler, requests: list[Request], tokens: list[int], flagged: list[int]
    ) -> list[FinishReason | None]:
        """The scheduler's own finish checks for the requests the arrays flagged (in batch order)."""
        reasons: list[FinishReason | None] = [None] * len(requests)
        for index in flagged:
            reason = scheduler._finish_reason(requests[index], tokens[index])
            if reason is not None:
                scheduler._finish_after_step(requests[index], reason)
                reasons[index] = reason
        return reasons
