"""Rolling accuracy of the predictor on the last N finished requests (exported by GetStats).

Only requests that were scheduled with this predictor's estimate (source PREDICTOR) and whose true
length is known (not finished by LENGTH) count: a fallback estimate says nothing about the model,
and a length cut at max_tokens is a lower bound, not a length.
"""

from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass

import numpy as np

from services.predictor.metrics import kendall_tau_b


@dataclass(frozen=True)
class LiveAccuracySnapshot:
    """Figures over the current window."""

    num_requests: int  # requests in the window
    window_size: int  # most requests the window holds
    kendall_tau: float  # tau-b of predicted p50 vs actual tokens; nan below 2 requests
    mae_tokens: float  # mean |p50 - actual|, tokens; nan when empty
    coverage_p90: float  # share of actual <= predicted p90; nan when empty


class LiveAccuracyWindow:
    """The last `window_size` (p50, p90, actual) triples; thread-safe."""

    def __init__(self, window_size: int) -> None:
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        self.window_size = window_size
        self._items: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=window_size)
        self._lock = threading.Lock()

    def add(self, predicted_p50_tokens: float, predicted_p90_tokens: float, actual_tokens: int) -> None:
        with self._lock:
            self._items.append((predicted_p50_tokens, predicted_p90_tokens, float(actual_tokens)))

    def snapshot(self) -> LiveAccuracySnapshot:
        """Current figures; O(n^2) in the window for tau (about 10 ms for n = 1000)."""
        with self._lock:
            items = np.asarray(self._items, dtype=np.float64).reshape(-1, 3)
        count = items.shape[0]
        if count == 0:
            return LiveAccuracySnapshot(0, self.window_size, math.nan, math.nan, math.nan)
        p50, p90, actual = items[:, 0], items[:, 1], items[:, 2]
        tau = kendall_tau_b(p50, actual) if count >= 2 else math.nan
        return LiveAccuracySnapshot(
            num_requests=count,
            window_size=self.window_size,
            kendall_tau=tau,
            mae_tokens=float(np.mean(np.abs(p50 - actual))),
            coverage_p90=float(np.mean(actual <= p90)),
        )
