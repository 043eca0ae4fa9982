"""Whether the engine takes a new request: queue caps, and a deadline it can still meet.

Four checks, cheapest first, each answering RESOURCE_EXHAUSTED at once with a message:

1. live requests (admitted, not finished) <= max_live_requests;
2. prompt tokens of the live requests <= max_live_prompt_tokens (a queue of few huge prompts is as
   deep as one of many small ones);
3. the wait for a place in the running batch <= max_queue_wait_steps steps (admission_slot_wait.py;
   off by default): under overload, admit only what starts in the next step or two;
4. deadline: the request's predicted completion time must fit in what is left of its deadline.

Why the deadline check lives in the engine and not the gateway: the engine alone knows the order its
policy serves requests in, every request queued (from all gateways), and its own measured step
times; the gateway sees a load figure polled every 0.5 s and only its own requests. The gateway
forwards the client's deadline (the engine call's timeout) and the prediction, and when one replica
refuses, its retry tries another.

Predicted completion of a request r (seconds), from a `QueueProfile` the engine thread publishes:

    ahead_tokens = predicted remaining output tokens of the live requests ranked ahead of r
                   (policies that serve shorter predicted work first: those predicted to need no
                   more than r; fcfs: all of them)
    finish_s    ~= max(own_tokens * decode_step_s,                           r's own decode
                       (ahead_tokens + own_tokens) * s_per_output_token)     the batch's throughput
                   + num_prompt_tokens * prefill_s_per_token

Under shortest-first service every request ranked ahead finishes before r, so the tokens ahead and
r's own are all produced before r ends, at most at the batch's measured throughput. Until the engine
has measured a decode step the check is skipped (no figures to predict with).

Shorter requests that arrive while r waits also go ahead of it (admission_inflow.py: the minute-23
burst of the 30-minute soak passed the check above and then starved behind them). They are counted
at the rate they were admitted lately, rho = seconds of such work admitted per second, for as long
as the policy lets newcomers overtake r (`overtake_horizon_s`: alise's TTFT aging horizon, after
which later arrivals rank behind r; else the scheduler's starvation promotion):

    base_s   = finish_s above
    total_s  = base_s / (1 - rho)        when rho < 1 and that is within the horizon H
             = base_s + rho * H          otherwise (infinite when H is: never served for sure)

Only while r would queue (a request is waiting, or the running batch is full) behind some live work
ranked ahead of it: otherwise the shorter work admitted lately has been served as it came (a rate r
would starve behind leaves a queue of it), and the window still holds the admissions of load that
has ended; rho (tokens admitted per second x the drain rate at the current batch) also reads
several times too high when the batch is below full, where each token drains slower than in the
full batch more work would run in. Counted regardless, an idle engine refused 32-token requests
with 60 s deadlines for the rest of the minute after a 20x burst ("0.00 s of work ranked ahead, 12.72 s
its own, 154.69 s of shorter work arriving meanwhile at 5.16 s per s"; overload_steps_bound, load 11),
and a contention run's second round had the gateway refuse all but 2 requests for ~30 s with the
engine idle (overload_contention.json). With work ahead but no queue, a quiet machine still refused
263 of 289 requests at 1x (`0.00 s of work ranked ahead, 1.14 s its own, 63.28 s of shorter work
arriving meanwhile at 2.11 s per s`, engine at 0.51 cores; overload_steps_bound_quiet.json).
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable

from services.common.errors import Overloaded
from services.common.refusal import RefusalReason
from services.engine.admission_inflow import AdmittedInflow
from services.engine.admission_slot_wait import EMPTY_PLACES, RunningPlaces, queue_wait_refusal, steps_until_place
from services.engine.scheduler.policy import PolicyName

# Policies that serve shorter predicted remaining work first (the others are treated as fcfs).
SHORTEST_FIRST_POLICIES = frozenset({PolicyName.ALISE, PolicyName.SRPT_ORACLE, PolicyName.MLFQ})
PROFILE_INTERVAL_S = 0.05  # the engine thread refreshes the profile at most this often


@dataclass(frozen=True)
class AdmissionLimits:
    """The engine's admission settings (a slice of EngineConfig)."""

    max_live_requests: int  # admitted-but-unfinished requests at most
    max_live_prompt_tokens: int  # their prompt tokens at most
    deadline_slack: float  # reject when predicted finish > slack * time left; 0 = no deadline check
    # reject when no place in the running batch frees within this many steps (admission_slot_wait); 0 = off
    max_queue_wait_steps: float = 0.0


@dataclass(frozen=True)
class QueueProfile:
    """The live requests' predicted remaining work, as the engine thread last saw it."""

    remaining_tokens: tuple[float, ...]  # predicted remaining output tokens per live request, ascending
    cumulative_tokens: tuple[float, ...]  # prefix sums of remaining_tokens (same length)
    shortest_first: bool  # the policy serves shorter predicted work first
    s_per_output_token: float  # the drain rate: recent steps' wall time per sampled token (0: not measured yet)
    decode_step_s: float  # one request's time per output token while it runs
    prefill_s_per_token: float  # marginal step time of one more prompt token
    taken_at_s: float  # time.monotonic() when taken
    # how long after a request starts waiting later arrivals may still overtake it, seconds (inf: always)
    overtake_horizon_s: float = math.inf
    # a new request would wait: some request is waiting, or the running batch is at max_num_seqs
    has_queue: bool = True
    # the running batch's places and when they free (admission_slot_wait)
    places: RunningPlaces = EMPTY_PLACES

    def tokens_ahead(self, own_tokens: float) -> float:
        """Predicted tokens of the live requests ranked ahead of a request predicted to need own_tokens."""
        if not self.remaining_tokens:
            return 0.0
        if not self.shortest_first:
            return self.cumulative_tokens[-1]
        num_ahead = bisect.bisect_right(self.remaining_tokens, own_tokens)
        return self.cumulative_tokens[num_ahead - 1] if num_ahead else 0.0

    def predicted_finish_s(self, own_tokens: float, num_prompt_tokens: int) -> tuple[float, float] | None:
        """(seconds of work ahead, r's own seconds), or None before the engine measured a decode step."""
        if self.s_per_output_token <= 0:
            return None
        ahead_tokens = self.tokens_ahead(own_tokens)
        own_s = own_tokens * self.decode_step_s + num_prompt_tokens * self.prefill_s_per_token
        total_s = max(own_tokens * self.decode_step_s, (ahead_tokens + own_tokens) * self.s_per_output_token)
        total_s += num_prompt_tokens * self.prefill_s_per_token
        return max(0.0, total_s - own_s), own_s

    def with_arrivals_ahead_s(self, base_s: float, arrivals_ahead_per_s: float) -> float:
        """Predicted completion once the work that arrives while r waits and ranks ahead of it is counted
        (arrivals_ahead_per_s: seconds of such work admitted per second lately; see the module docstring)."""
        rho, horizon_s = arrivals_ahead_per_s, self.overtake_horizon_s
        if rho <= 0:
            return base_s
        if rho < 1 and base_s / (1 - rho) <= horizon_s:
            return base_s / (1 - rho)
        return base_s + rho * horizon_s  # inf when the horizon is


EMPTY_PROFILE = QueueProfile((), (), True, 0.0, 0.0, 0.0, 0.0)


def take_queue_profile(core, s_per_token: float) -> QueueProfile:
    """Reads the scheduler's live requests (engine thread only): O(n log n) in live requests.

    s_per_token is the drain rate over the recent steps (drain_rate.DrainRate), not the last step's.
    """
    scheduler = core.scheduler
    remaining = sorted(request.predicted_remaining_tokens for request in scheduler.requests.values())
    cost = scheduler.cost_model
    return QueueProfile(
        remaining_tokens=tuple(remaining),
        cumulative_tokens=tuple(itertools.accumulate(remaining)),
        shortest_first=scheduler.policy.name in SHORTEST_FIRST_POLICIES,
        s_per_output_token=s_per_token,
        decode_step_s=cost.decode_step_s,
        prefill_s_per_token=cost.prefill_s_per_token,
        taken_at_s=time.monotonic(),
        overtake_horizon_s=_overtake_horizon_s(scheduler),
        has_queue=bool(scheduler.waiting) or len(scheduler.running) >= scheduler.limits.max_num_seqs,
        places=RunningPlaces(
            running=tuple((request.request_id, request.predicted_remaining_tokens) for request in scheduler.running),
            max_num_seqs=scheduler.limits.max_num_seqs,
            num_steps=core.num_steps,
            steps_now=lambda: core.num_steps,
        ),
    )


def _overtake_horizon_s(scheduler) -> float:
    """The policy's TTFT aging horizon when it has a finite one, else the starvation promotion's wait."""
    aging_horizon_s = getattr(scheduler.policy, "aging_horizon_s", math.inf)
    return min(aging_horizon_s, scheduler.limits.max_wait_s)


class AdmissionControl:
    """Counts live requests and their prompt tokens (asyncio thread only) and decides admission."""

    def __init__(self, limits: AdmissionLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.inflow = AdmittedInflow(clock=clock)  # the admissions' predicted tokens, lately
        self._prompt_tokens_by_id: dict[str, int] = {}
        self.num_live_prompt_tokens = 0
        self.num_rejected_deadline = 0  # since start
        self.num_rejected_full = 0  # since start

    @property
    def num_live(self) -> int:
        return len(self._prompt_tokens_by_id)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._prompt_tokens_by_id

    def admit(
        self,
        request_id: str,
        num_prompt_tokens: int,
        predicted_output_tokens: float,
        time_left_s: float | None,
        profile: QueueProfile,
    ) -> None:
        """Records the request as live, or raises Overloaded saying which limit refused it."""
        self._check_caps(num_prompt_tokens)
        self._check_queue_wait(profile)
        self._check_deadline(num_prompt_tokens, predicted_output_tokens, time_left_s, profile)
        self._prompt_tokens_by_id[request_id] = num_prompt_tokens
        self.num_live_prompt_tokens += num_prompt_tokens
        self.inflow.on_admitted(predicted_output_tokens)

    def release(self, request_id: str) -> None:
        """The request finished, failed or was cancelled (idempotent)."""
        self.num_live_prompt_tokens -= self._prompt_tokens_by_id.pop(request_id, 0)

    def _check_caps(self, num_prompt_tokens: int) -> None:
        limits = self.limits
        if self.num_live >= limits.max_live_requests:
            self.num_rejected_full += 1
            raise Overloaded(
                f"engine queue is full ({limits.max_live_requests} live requests); retry later",
                refusal_reason=RefusalReason.QUEUE_FULL,
            )
        if self.num_live_prompt_tokens + num_prompt_tokens > limits.max_live_prompt_tokens and self.num_live:
            self.num_rejected_full += 1
            raise Overloaded(
                f"engine queue is full: {self.num_live_prompt_tokens} prompt tokens queued + {num_prompt_tokens} "
                f"would exceed the cap of {limits.max_live_prompt_tokens}; retry later",
                refusal_reason=RefusalReason.QUEUE_FULL,
            )

    def _check_queue_wait(self, profile: QueueProfile) -> None:
        max_wait_steps = self.limits.max_queue_wait_steps
        if max_wait_steps <= 0:
            return
        wait_steps = steps_until_place(profile.places, self.num_live, self.__contains__)
        step_s = profile.s_per_output_token * profile.places.max_num_seqs  # a full batch's step
        message = queue_wait_refusal(wait_steps, max_wait_steps, step_s)
        if message is not None:
            self.num_rejected_full += 1
            raise Overloaded(message, refusal_reason=RefusalReason.QUEUE_FULL)

    def _check_deadline(
        self, num_prompt_tokens: int, predicted_output_tokens: float, time_left_s: float | None, profile: QueueProfile
    ) -> None:
        if time_left_s is None or self.limits.deadline_slack <= 0:
            return
        predicted = profile.predicted_finish_s(predicted_output_tokens, num_prompt_tokens)
        if predicted is None:
            return
        ahead_s, own_s = predicted
        arrivals_per_s = 0.0  # under fcfs later arrivals never go ahead
        # No queue, or nothing ranked ahead in it: the shorter work admitted lately was served as it came,
        # so its rate says nothing about a queue r would starve behind (see the module docstring)
        if profile.shortest_first and profile.has_queue and profile.tokens_ahead(predicted_output_tokens) > 0:
            arrivals_per_s = self.inflow.tokens_per_s_at_most(predicted_output_tokens) * profile.s_per_output_token
        total_s = profile.with_arrivals_ahead_s(ahead_s + own_s, arrivals_per_s)
        if total_s > self.limits.deadline_slack * time_left_s:
            self.num_rejected_deadline += 1
            raise Overloaded(
                f"deadline cannot be met: predicted completion in {total_s:.2f} s ({ahead_s:.2f} s of work ranked "
                f"ahead, {own_s:.2f} s its own, {total_s - ahead_s - own_s:.2f} s of shorter work arriving meanwhile "
                f"at {arrivals_per_s:.2f} s per s) but the deadline is in {time_left_s:.2f} s; "
                "rejected at once instead of timing out later",
                refusal_reason=RefusalReason.DEADLINE_UNMEETABLE,
            )
