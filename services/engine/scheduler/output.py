"""The contract between the scheduler and the model runner, one step at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

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


@dataclass(frozen=True)
class SchedulerOutput:
    """What one step runs. Its totals are computed once (the engine core reads each more than once
    per step, and a sum over every chunk is a per-request loop): chunks must not change after the
    first read."""

    chunks: list[ScheduledChunk]  # in batch order
    preempted_request_ids: list[str] = field(default_factory=list)  # lost their device KV this step
    restores: list[KvRestore] = field(default_factory=list)  # saved KV to copy in before the model runs

    @cached_property
    def num_scheduled_tokens(self) -> int:
        """Tokens fed to the model this step (<= the step token budget)."""
        return sum(chunk.num_new_tokens for chunk in self.chunks)

    @cached_property
    def num_kv_tokens_read(self) -> int:
        """Cached tokens attention reads this step (an input of the step-time cost model)."""
        return sum(chunk.num_context_tokens for chunk in self.chunks)

    @cached_property
    def num_draft_tokens(self) -> int:
        """Draft tokens verified this step (0 without speculative decoding)."""
        return sum(chunk.num_draft_tokens for chunk in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass(slots=True)  # not frozen, for the same reason as ScheduledChunk (treat as read-only)
class StepResult:
    """What one step produced for one request, as streamed back to its caller."""

    request_id: str
    new_token_ids: list[int]  # tokens appended this step: 1, or up to num_draft_tokens + 1 for a verify
    finish_reason: FinishReason | None  # set when the request finished this step


@dataclass(frozen=True)
class StepSamples:
    """What the model runner returns for a step (Scheduler.update's inputs)."""

    tokens: dict[str, int]  # the sampled token of each request that samples and verifies nothing
    # Each verify chunk's request: its accepted drafts followed by one token (1..num_draft_tokens + 1).
    verified: dict[str, list[int]] = field(default_factory=dict)
