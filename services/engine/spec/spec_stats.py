"""Speculative-decoding counters: the engine thread records each verify step; GetStats, Prometheus and
the benchmarks read the figures.

Definitions (over all steps since start):
    acceptance_rate        = accepted draft tokens / draft tokens verified
    mean_accepted_length   = accepted draft tokens / request verifies (one request's verify in one step)
    mean_tokens_per_verify = 1 + mean_accepted_length (the target's own token follows every verify)
A step counts as a verify step when at least one request in it verified drafts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class SpecStatsSnapshot:
    """The counters at one moment, consistent with each other."""

    num_draft_tokens: int  # draft tokens verified
    num_accepted_tokens: int  # of which accepted
    num_verify_steps: int  # engine steps with at least one verifying request
    num_request_verifies: int  # (request, step) pairs that verified drafts

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted; 0 before any draft."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Accepted drafts per request verify; 0 before any verify."""
        return self.num_accepted_tokens / self.num_request_verifies if self.num_request_verifies else 0.0

    @property
    def mean_tokens_per_verify(self) -> float:
        """Output tokens per request verify (accepted drafts + the target's token); 0 before any verify."""
        return 1.0 + self.mean_accepted_length if self.num_request_verifies else 0.0


class SpecStats:
    """Monotonic counters, updated by the engine thread once per step with drafts, read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._num_draft_tokens = 0
        self._num_accepted_tokens = 0
        self._num_verify_steps = 0
        self._num_request_verifies = 0

    def record_step(self, num_drafted: int, num_accepted: int, num_verifying_requests: int) -> None:
        """One step's totals: num_verifying_requests requests verified num_drafted drafts between them,
        num_accepted of which were accepted. A step without verifying requests records nothing."""
        if not 0 <= num_accepted <= num_drafted or num_verifying_requests < 0:
            raise ValueError(
                f"need 0 <= accepted ({num_accepted}) <= drafted ({num_drafted}), requests >= 0"
                f" ({num_verifying_requests})"
            )
        if num_drafted > 0 and num_verifying_requests == 0:
            raise ValueError(f"{num_drafted} drafts verified by no request")
        if num_verifying_requests == 0:
            return
        with self._lock:
            self._num_draft_tokens += num_drafted
            self._num_accepted_tokens += num_accepted
            self._num_verify_steps += 1
            self._num_request_verifies += num_verifying_requests

    def snapshot(self) -> SpecStatsSnapshot:
        with self._lock:
            return SpecStatsSnapshot(
                self._num_draft_tokens, self._num_accepted_tokens, self._num_verify_steps, self._num_request_verifies
            )

    @property
    def num_draft_tokens(self) -> int:
        return self._num_draft_tokens

    @property
    def num_accepted_tokens(self) -> int:
        return self._num_accepted_tokens

    @property
    def num_verify_steps(self) -> int:
        return self._num_verify_steps

    @property
    def acceptance_rate(self) -> float:
        return self.snapshot().acceptance_rate

    @property
    def mean_accepted_length(self) -> float:
        return self.snapshot().mean_accepted_length
