"""The contract between the scheduler and the model runner, one step at a time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np

from services.engine.request import FinishReason, Request
from services.engine.scheduler.kv_eviction import KvRestore


@dataclass(slots=True)  # not frozen: frozen __init__ is slow, and one is built per request per step
class ScheduledChunk:
    """Tokens of one request to compute in this step (treat as read-only)."""

    request: Request
    # Positions [num_computed_tokens, num_computed_tokens + num_new_tokens) are fed this step.
    num_new_tokens: int
    # True when this chunk catches the request up to num_tokens: the step samples a token for it.
    samples_token: bool
    # num_computed_tokens + num_new_tokens at scheduling time: the context attention reads.
    num_context_tokens: int
    # Speculative verify: the last num_draft_tokens of the new tokens are drafts (request.draft_token_ids),
    # checked against the model in this step; the step may append up to num_draft_tokens + 1 tokens.
    num_draft_tokens: int = 0


@dataclass(frozen=True, slots=True)
class DecodeColumns:
    """The running decodes at the head of a step, as columns instead of one ScheduledChunk each (the
    steady decode step, scheduler/steady.py): request i feeds one token, samples, verifies no draft.

    Invariant: seq_lens[i] == requests[i].num_computed_tokens + 1 == its num_tokens at scheduling, and
    num_output_tokens[i] is its output count then; the lists never change after the step is scheduled."""

    requests: list[Request]  # batch order: the step's first len(requests) requests
    request_ids: list[str]
    seq_lens: np.ndarray  # int64: each decode's context length (its num_context_tokens)
    seq_lens_list: list[int]
    num_output_tokens: np.ndarray  # int64: output tokens before this step's
    # The scheduler's status-change count (preemptions and finishes) when the columns were scheduled; -1:
    # unknown. Two steps with the same count have no preemption between them (InputBatch._rows_of).
    num_status_changes: int = -1

    def __len__(self) -> int:
        return len(self.requests)

    def chunks(self) -> list[ScheduledChunk]:
        """The same decodes as chunks (for readers of SchedulerOutput.chunks)."""
        return [
            ScheduledChunk(request, 1, True, seq_len) for request, seq_len in zip(self.requests, self.seq_lens_list)
        ]


class SchedulerOutput:
    """What one step runs: `decodes` (columns; None when the step was not scheduled that way) followed by
    `tail`, one chunk each. `chunks` is every request's chunk in batch order, built on first read when
    there are decode columns (the hot path reads the columns). Totals are computed once: neither part
    may change after the first read."""

    def __init__(
        self,
        chunks: list[ScheduledChunk],
        preempted_request_ids: list[str] | None = None,
        restores: list[KvRestore] | None = None,
        decodes: DecodeColumns | None = None,
    ) -> None:
        self.tail = chunks  # the chunks after the decode columns (every chunk when decodes is None)
        self.preempted_request_ids = preempted_request_ids if preempted_request_ids is not None else []
        self.restores = restores if restores is not None else []  # saved KV to copy in before the model runs
        self.decodes = decodes

    @cached_property
    def chunks(self) -> list[ScheduledChunk]:
        """Every chunk, in batch order."""
        return self.tail if self.decodes is None else self.decodes.chunks() + self.tail

    @cached_property
    def num_scheduled_tokens(self) -> int:
        """Tokens fed to the model this step (<= the step token budget)."""
        return (len(self.decodes) if self.decodes else 0) + sum(chunk.num_new_tokens for chunk in self.tail)

    @cached_property
    def num_kv_tokens_read(self) -> int:
        """Cached tokens attention reads this step (an input of the step-time cost model)."""
        head = int(self.decodes.seq_lens.sum()) if self.decodes else 0
        return head + sum(chunk.num_context_tokens for chunk in self.tail)

    @cached_property
    def num_draft_tokens(self) -> int:
        """Draft tokens verified this step (0 without speculative decoding; decode columns have none)."""
        return sum(chunk.num_draft_tokens for chunk in self.tail)

    @property
    def is_empty(self) -> bool:
        return not self.tail and not self.decodes


class StepResult(NamedTuple):
    """What one step produced for one request, as streamed back to its caller. A tuple: the steady
    decode step builds all of them in C (tuple.__new__ over zipped columns), at a third of the cost of
    a dataclass instance each."""

    request_id: str
    new_token_ids: list[int]  # tokens appended this step: 1, or up to num_draft_tokens + 1 for a verify
    finish_reason: FinishReason | None  # set when the request finished this step


class SampledTokens(Mapping[str, int]):
    """The sampled token of each request that samples and verifies nothing: the decode columns' tokens
    as a list in their order, the others by request id. Reads as a dict {request id: token}, built on
    first use by key (Scheduler.update reads the column directly)."""

    def __init__(self, decode_ids: list[str], decode_tokens: list[int], others: dict[str, int]) -> None:
        self.decode_ids = decode_ids
        self.decode_tokens = decode_tokens
        self.others = others
        self._dict: dict[str, int] | None = None

    def as_dict(self) -> dict[str, int]:
        if self._dict is None:
            self._dict = dict(zip(self.decode_ids, self.decode_tokens))
            self._dict.update(self.others)
        return self._dict

    def __getitem__(self, request_id: str) -> int:
        token = self.others.get(request_id)  # the tail's few requests without building the whole dict
        return token if token is not None else self.as_dict()[request_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.decode_tokens) + len(self.others)


@dataclass(frozen=True)
class StepSamples:
    """What the model runner returns for a step (Scheduler.update's inputs)."""

    tokens: Mapping[str, int]  # the sampled token of each request that samples and verifies nothing
    # Each verify chunk's request: its accepted drafts followed by one token (1..num_draft_tokens + 1).
    verified: dict[str, list[int]] = field(default_factory=dict)
