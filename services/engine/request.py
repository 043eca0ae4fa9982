"""A request's state inside the engine, in token counts (plain Python: no torch).

A request is scheduled by two counts, not by "prefill" or "decode" modes:

    all_token_ids:  [ p0 p1 p2 p3 p4 | o0 o1 ]       num_tokens = 7
                      <--- computed ---->             num_computed_tokens = 6 (KV written)
                                          ^ o1 is the last sampled token, not yet fed back

Each step assigns a request some tokens so that num_computed_tokens catches up with num_tokens; a
step that catches up fully yields one new sampled token. A prompt longer than the step's token
budget is fed over several steps (chunked prefill). Preemption by recompute resets
num_computed_tokens to 0 and keeps the output generated so far; preemption by swap keeps it, with
the KV in the host tier until the request is admitted again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.engine.length_distribution import LengthDistribution


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # admitted, never run
    RUNNING = "running"  # in the running batch, holds KV blocks
    PREEMPTED = "preempted"  # was running, lost its KV blocks, waits to run again
    FINISHED = "finished"  # done; holds nothing


class FinishReason(enum.Enum):
    EOS = "eos"  # the model emitted end-of-sequence
    LENGTH = "length"  # max_tokens or the model context reached
    ABORTED = "aborted"  # cancelled by the client or the Abort RPC


@dataclass(frozen=True)
class SamplingOptions:
    """Fully resolved sampling parameters of one request."""

    max_tokens: int  # output tokens at most, > 0
    temperature: float  # 0 = greedy
    top_p: float  # in (0, 1]; 1 disables
    top_k: int  # 0 disables
    seed: int  # seeds the request's own generator
    ignore_eos: bool  # keep going past EOS until max_tokens
    min_tokens: int = 0  # in [0, max_tokens]: stop token ids are masked until this many output tokens (min_tokens.py)
    speculative: bool = True  # False opts the request out of speculative decoding (spec/)


@dataclass(eq=False)  # identity equality: list.remove and `in` must not compare every field
class Request:
    """Mutable per-request state, owned by the engine thread (or the simulator)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    arrival_time_s: float  # time.monotonic() at admission
    predicted_output_tokens: float  # predicted mean output length, tokens
    priority_class: int = 0  # alise.v1.PriorityClass value; 0 = unspecified
    # Predicted output-length distribution; None = exponential with mean predicted_output_tokens.
    length_distribution: LengthDistribution | None = None
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose KV is in the cache (device, or host while swapped)
    # Tokens whose KV waits in the memory service's host tier (swapped out while preempted); 0 = none.
    # While > 0, num_computed_tokens equals it and the KV comes back on admission (kv_eviction.py).
    num_host_kv_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    first_scheduled_time_s: float | None = None  # monotonic time of its first step
    first_token_time_s: float | None = None  # monotonic time of its first output token
    finish_time_s: float | None = None  # monotonic time it finished (any reason)
    num_preemptions: int = 0
    # Scheduler bookkeeping (see scheduler.py): when it last started waiting, when it was promoted
    # for having waited max_wait_s (None = never), and its cached rank in the waiting queue.
    wait_started_s: float = 0.0
    promoted_at_s: float | None = None
    rank_key: float = 0.0
    # Speculative decoding (spec/speculator.py sets both before each step): draft positions the scheduler
    # may add to this request's next decode, and the drafts when known before the step (n-gram); None
    # = the model runner drafts them in the step (early exit). The scheduler may grant fewer.
    num_draft_slots: int = 0
    draft_token_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if self.length_distribution is None:
            self.length_distribution = LengthDistribution(max(1.0, self.predicted_output_tokens))

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens: what num_computed_tokens has to catch up with."""
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def max_total_tokens(self) -> int:
        """The most tokens this request can ever hold KV for."""
        return self.num_prompt_tokens + self.sampling.max_tokens

    def token_ids_slice(self, start: int, stop: int) -> list[int]:
        """Tokens [start, stop) of prompt + output, without concatenating the whole sequence."""
        num_prompt = len(self.prompt_token_ids)
        if stop <= num_prompt:
            return self.prompt_token_ids[start:stop]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : stop - num_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[: stop - num_prompt]

    @property
    def predicted_remaining_tokens(self) -> float:
        """Expected output tokens still to come given those produced so far (re-estimated from the
        length distribution, so a request that outlived its prediction gets a fresh estimate),
        capped by max_tokens; at least 1 while the request is live."""
        limit = self.sampling.max_tokens - len(self.output_token_ids)
        expected = self.length_distribution.expected_remaining_tokens(len(self.output_token_ids))
        return max(1.0, min(expected, limit))
