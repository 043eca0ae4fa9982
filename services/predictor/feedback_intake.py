"""What the predictor does with a batch of finished requests: count, score, store.

Eligible for live accuracy: uncensored (EOS / STOP) and scheduled with this service's estimate
(the report carries it). Every accepted record is stored when a feedback directory is configured;
censored ones are stored too, marked, so a later `train --from-feedback --include-censored` can
decide to use them.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from services.predictor.feedback_store import FeedbackRecord, FeedbackStore
from services.predictor.live_accuracy import LiveAccuracyWindow


class FeedbackIntake:
    """Counters, the live accuracy window and the optional store, behind one `accept`."""

    def __init__(self, window: LiveAccuracyWindow, store: FeedbackStore | None) -> None:
        self.window = window
        self._store = store
        self.num_accepted = 0  # records accepted since start
        self.num_censored = 0  # of those, finished by LENGTH

    async def accept(self, records: Sequence[FeedbackRecord]) -> None:
        """Scores and (when configured) stores records; file I/O runs in a worker thread."""
        for record in records:
            self.num_accepted += 1
            if record.censored:
                self.num_censored += 1
                continue
            if record.predicted_p50_tokens is not None and record.predicted_p90_tokens is not None:
                self.window.add(record.predicted_p50_tokens, record.predicted_p90_tokens, record.num_output_tokens)
        if self._store is not None:
            await asyncio.to_thread(self._store.append, records)
