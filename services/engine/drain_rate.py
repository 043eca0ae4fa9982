"""The engine's drain rate: step wall time per output token over the recent steps, not the last one.

Admission (admission_control.QueueProfile) and GetStats (`predicted_outstanding_work_s`,
`seconds_per_output_token`) convert predicted tokens into seconds with this rate. Taken from the
last step alone it jumps with every step's mix: a step that is mostly a long prefill chunk samples
few tokens and makes the queue look many times slower for the next refresh, one that samples a full
decode batch makes it look fast, and a step that samples nothing says nothing. Over a window of
steps both cancel out: the rate is what the engine actually delivered lately, prefill included.

    steps   ... | s-31 | s-30 | ... | s-1 | s |      window_steps = 32
    rate  = sum(duration_s) / sum(num_sampled_tokens) over the window   (0 while no token sampled)

Invariant: `_sum_duration_s` and `_sum_tokens` are the sums over exactly the steps in `_steps`.
Engine thread only (fed after each step, read when the snapshot and queue profile are taken).
"""

from __future__ import annotations

import collections

from services.engine.engine_core import StepTiming

DEFAULT_WINDOW_STEPS = 32  # ~1-3 s of steps on CPU, a few hundred ms on a GPU


class DrainRate:
    """Running sums over the last `window_steps` steps."""

    def __init__(self, window_steps: int = DEFAULT_WINDOW_STEPS) -> None:
        if window_steps < 1:
            raise ValueError(f"window_steps must be >= 1, got {window_steps}")
        self.window_steps = window_steps
        self._steps: collections.deque[tuple[float, int]] = collections.deque()
        self._sum_duration_s = 0.0
        self._sum_tokens = 0

    def on_step(self, step: StepTiming | None) -> None:
        """Adds one step (None: nothing ran) and drops the oldest past the window."""
        if step is None:
            return
        self._steps.append((step.duration_s, step.num_sampled_tokens))
        self._sum_duration_s += step.duration_s
        self._sum_tokens += step.num_sampled_tokens
        if len(self._steps) > self.window_steps:
            duration_s, num_tokens = self._steps.popleft()
            self._sum_duration_s -= duration_s
            self._sum_tokens -= num_tokens

    @property
    def seconds_per_output_token(self) -> float:
        """Window wall time per sampled token; 0 while the window sampled no token (not measured)."""
        if self._sum_tokens == 0:
            return 0.0
        return self._sum_duration_s / self._sum_tokens
