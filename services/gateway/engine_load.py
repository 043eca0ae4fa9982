"""Predicted outstanding work of one engine replica: its last polled stats plus this gateway's
own traffic since that poll.

The engine reports (GetStats) the predicted remaining output tokens of everything it holds and that
figure in seconds. A poll every few hundred ms is too slow on its own: a burst of requests arriving
between two polls would all see the same figure and all go to the same replica. So the gateway
keeps its own ledger of what it sent and moves the figure with it:

    offset_tokens      = polled_tokens - mine_at_poll        (work of other gateways, and the
                                                              engine's corrections of mine)
    outstanding_tokens = max(0, offset_tokens + mine_now)    mine_* = sum over this gateway's live
                                                              requests of their remaining tokens
    outstanding_s      = outstanding_tokens * seconds_per_token

So between polls the estimate moves exactly with this gateway's sends, streamed tokens and finishes;
at each poll it snaps back to the engine's own figure. A request's remaining tokens mirror the
engine's rule: max(1, min(predicted - generated, max_tokens - generated)) while it is live.
seconds_per_token is the engine's own drain rate, as the median of its last RATE_WINDOW answers: the
`seconds_per_output_token` it reports (taken over its recent steps, so it is known even when nothing
is outstanding at the poll), else polled seconds / polled tokens (an engine that does not report it:
its last step alone, where a step that was mostly prefill reports a rate many times the usual, which
the median ignores). Before an engine has reported a rate, the caller supplies a default (e.g. the
other replicas').

The wait of a new request before its first token is more than the work queued ahead of it when the
replica's running batch is full: it needs a place, and a place frees only when a running request
ends. Measured at 20x capacity (bench chaos): from an idle engine the batch of 16 filled within 0.5 s,
and the next request admitted waited 0.6 s for the first of them to end, while the queued work said
0.05 s. So `first_slot_wait_s` predicts that wait from this gateway's own running requests:

    capacity        the replica's running batch capacity (GetStats max_num_seqs; 0 = not reported: no
                    figure). Not learned from the largest batch seen: a replica that never ran more than
                    3 requests would then look full at 3 and refuse under light load.
    places          each running request's remaining tokens (when its place frees, in steps); places
                    not taken free now; the waiting requests, in the order sent, each take the
                    earliest place and hold it for their own remaining tokens
    wait_s          = the earliest place left after that * step_s (0 while running + waiting < capacity)
    step_s          = seconds_per_token * capacity   (a full batch's step makes one token per request)

Only this gateway's requests are counted: with several gateways on one replica none of them sees a
full batch of its own, and the figure stays 0 (the queued-work figure alone then bounds the wait). A
batch limited by KV blocks before max_num_seqs is not seen as full either.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import statistics
from dataclasses import dataclass

RATE_WINDOW = 9  # polled seconds-per-token figures the median is taken over (~4.5 s at 0.5 s polls)


@dataclass
class InFlightRequest:
    """One request this gateway has sent to the replica and not yet seen finish."""

    request_key: int  # unique within the tracker
    predicted_output_tokens: float  # the prediction the engine schedules with (> 0)
    max_tokens: int  # the request's max_tokens (the engine never generates more)
    num_received_tokens: int = 0  # output tokens streamed back so far

    @property
    def remaining_tokens(self) -> float:
        """Predicted output tokens still to come (at least 1 while live), as the engine counts them."""
        left_by_prediction = self.predicted_output_tokens - self.num_received_tokens
        left_by_limit = self.max_tokens - self.num_received_tokens
        return max(1.0, min(left_by_prediction, left_by_limit))


class ReplicaLoadTracker:
    """The ledger above for one replica; all methods run on the event loop (no locking)."""

    def __init__(self) -> None:
        self._live: dict[int, InFlightRequest] = {}
        self._keys = itertools.count()
        self._offset_tokens = 0.0  # polled tokens minus this gateway's share at poll time
        self.seconds_per_token: float | None = None  # engine's drain rate; None until reported
        self._recent_rates: collections.deque[float] = collections.deque(maxlen=RATE_WINDOW)
        self.num_polls = 0  # stats answers received
        self.batch_capacity = 0  # the replica's max_num_seqs, from its stats (0 = not reported yet)

    @property
    def num_in_flight(self) -> int:
        return len(self._live)

    def begin(self, predicted_output_tokens: float, max_tokens: int) -> InFlightRequest:
        """Records a request about to be sent."""
        request = InFlightRequest(next(self._keys), max(1.0, predicted_output_tokens), max_tokens)
        self._live[request.request_key] = request
        return request

    def end(self, request: InFlightRequest) -> None:
        """The request finished, failed or was cancelled: it no longer loads the replica."""
        self._live.pop(request.request_key, None)

    def mine_tokens(self) -> float:
        """Remaining predicted tokens of this gateway's live requests."""
        return sum(request.remaining_tokens for request in self._live.values())

    def waiting_tokens(self) -> float:
        """Predicted tokens of this gateway's requests that have no output token yet (queued or in
        prefill): the work a new request would wait behind before its own first token."""
        return sum(request.remaining_tokens for request in self._live.values() if request.num_received_tokens == 0)

    def first_slot_wait_s(self, seconds_per_token: float) -> float:
        """Predicted seconds until the replica's running batch has a place for one more request (0: room now):
        first_slot_wait_steps() full-batch steps of seconds_per_token x capacity each."""
        return self.first_slot_wait_steps() * seconds_per_token * self.batch_capacity

    def first_slot_wait_steps(self) -> float:
        """Predicted engine steps until the replica's running batch has a place for one more request (0: room
        now; 1: a running request makes its last token in the step under way, as far as this gateway has seen).

        Places free as running requests end; the requests waiting ahead (no token yet, in the order sent)
        take them first and each holds its place for its own predicted tokens, so the new request's place is
        the (num_waiting + 1)-th to free: replayed below in full-batch steps. (Taking the j-th running end
        alone, capped at the last, said at most one batch's wait however deep the queue.)"""
        capacity = self.batch_capacity
        if capacity <= 0 or len(self._live) < capacity:
            return 0.0
        ends = [r.remaining_tokens for r in self._live.values() if r.num_received_tokens > 0]  # in steps from now
        ends += [0.0] * (capacity - len(ends))  # places free now (or taken by requests not yet seen running)
        heapq.heapify(ends)
        for request in self._live.values():  # insertion order: the order sent
            if request.num_received_tokens == 0:
                heapq.heappush(ends, heapq.heappop(ends) + request.remaining_tokens)
        return ends[0]

    def on_stats(
        self,
        polled_tokens: float,
        polled_work_s: float,
        mine_at_poll: float,
        polled_s_per_token: float = 0.0,
        polled_max_num_seqs: int = 0,
    ) -> None:
        """A GetStats answer; mine_at_poll = mine_tokens() when the poll was sent; polled_s_per_token =
        the engine's reported drain rate (0: not reported or not measured yet); polled_max_num_seqs = its
        running batch's capacity (0: not reported)."""
        self.num_polls += 1
        self.batch_capacity = polled_max_num_seqs
        self._offset_tokens = polled_tokens - mine_at_poll
        rate = polled_s_per_token
        if rate <= 0 and polled_tokens > 0 and polled_work_s > 0:
            rate = polled_work_s / polled_tokens
        if rate > 0:
            self._recent_rates.append(rate)
            self.seconds_per_token = statistics.median(self._recent_rates)

    def outstanding_tokens(self) -> float:
        return max(0.0, self._offset_tokens + self.mine_tokens())

    def outstanding_work_s(self, default_seconds_per_token: float) -> float:
        """Predicted seconds of work queued on the replica (its rate, or the default before it has one)."""
        rate = self.seconds_per_token if self.seconds_per_token is not None else default_seconds_per_token
        return self.outstanding_tokens() * rate
