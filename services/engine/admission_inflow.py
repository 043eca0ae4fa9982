"""The work admitted lately, by predicted size: how fast work that will rank ahead keeps arriving.

Deadline admission (admission_control) predicts a request's completion from the work ranked ahead of
it now. Under a policy that serves shorter predicted work first that is not enough: every shorter
request admitted while it waits also goes ahead of it. In the 30-minute soak a burst admitted at
minute 23 onto engines the machine was starving (load 20-29) passed the check, then stayed behind
the shorter work that kept arriving faster than the engines drained it; 7 of it ended
DEADLINE_EXCEEDED at 300 s with 14-22 of their ~60 tokens.

Preemptive priority queueing gives the correction (the response time of a job of size x when the
jobs ranked ahead of it arrive at load rho(x) = their arrival rate of work / the service rate):

    T(x) ~= (work ranked ahead now + x's own work) / (1 - rho(x))       rho(x) < 1
    T(x) = infinite                                                      rho(x) >= 1: never served
                                                                         for sure while that lasts

rho(x) is measured here: the predicted output tokens of the requests admitted over the last
`window_s` seconds whose prediction is at most x's (those rank ahead of x), per second, times the
engine's drain rate (seconds per output token). Under fcfs later arrivals never go ahead: rho = 0.

The sum is asked for on every deadline check; summing the window each time cost O(admissions in the
window) per request. The window's predictions also live in a PrefixSums (a Fenwick tree over the
values' order, admission_prefix_sums), so both the check and an admission take a fixed <= 64 steps.

Invariant: `_admitted` holds (time, predicted tokens) of the admissions of the last window_s only,
oldest first, and `_by_tokens` holds exactly their predicted tokens; everything runs on the engine's
asyncio thread (no lock).
"""

from __future__ import annotations

import collections
import time
from typing import Callable

from services.engine.admission_prefix_sums import PrefixSums

# Long enough that one burst (e.g. a queue filling at once) does not read as a sustained rate: with 10 s,
# 64 requests admitted at once under a 64-request cap read as rho ~1.5 and refused requests of a 60 s
# deadline that then waited ~10 s (test_reliability_overload); short enough to follow the machine's state.
INFLOW_WINDOW_S = 60.0


class AdmittedInflow:
    """Sliding window of the admissions' predicted output tokens."""

    def __init__(self, window_s: float = INFLOW_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._admitted: collections.deque[tuple[float, float]] = collections.deque()
        self._by_tokens = PrefixSums()  # the same admissions' predicted tokens, for sums by size
        self._first_admitted_s: float | None = None  # time of the first admission ever

    def on_admitted(self, predicted_output_tokens: float) -> None:
        now_s = self._clock()
        if self._first_admitted_s is None:
            self._first_admitted_s = now_s
        self._forget_before(now_s - self.window_s)
        self._admitted.append((now_s, predicted_output_tokens))
        self._by_tokens.add(predicted_output_tokens)

    def tokens_per_s_at_most(self, own_tokens: float) -> float:
        """Predicted output tokens per second admitted lately by requests predicted to need <= own_tokens;
        0 until a whole window has passed since the first admission: the first seconds are a burst
        (the queue filling) and the engine's first, slow steps inflate its drain rate (a 5-minute soak
        refused 59 requests in its first 20 s on that product, 130 s of work predicted ahead at 0.1 s)."""
        now_s = self._clock()
        if self._first_admitted_s is None or now_s - self._first_admitted_s < self.window_s:
            return 0.0
        self._forget_before(now_s - self.window_s)
        return self._by_tokens.sum_at_most(own_tokens) / self.window_s

    def _forget_before(self, oldest_s: float) -> None:
        while self._admitted and self._admitted[0][0] < oldest_s:
            self._by_tokens.remove(self._admitted.popleft()[1])
