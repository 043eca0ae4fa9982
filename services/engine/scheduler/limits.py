"""SchedulerLimits: the per-step limits of the batch, the starvation bound and the readmission headroom."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerLimits:
    """Per-step limits of the batch, and the starvation bound."""

    max_num_seqs: int  # requests in the running batch at most
    max_num_batched_tokens: int  # tokens fed to the model per step at most (the token budget)
    max_model_len: int  # prompt + output tokens per request at most
    max_wait_s: float = 60.0  # a request waiting this long is promoted (math.inf disables)
    # Readmission headroom of a preempted request, tokens per running request (readmission.py); None: the
    # policy's own (SchedulingPolicy.readmit_headroom_tokens), 0: none (vLLM's behaviour)
    readmit_headroom_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "max_wait_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.readmit_headroom_tokens is not None and self.readmit_headroom_tokens < 0:
            raise ValueError(
                f"readmit_headroom_tokens must be >= 0 (None: the policy's), got {self.readmit_headroom_tokens}"
            )
