"""The speculative (ALISE) policy: shortest estimated remaining time first, preemptive.

    remaining_s = prefill_s_per_token * uncomputed tokens          (prompt not yet in KV; after a
                                                                    recompute preemption, all of it)
                + decode_step_s * expected remaining output tokens  (from the length distribution,
                                                                    conditional on what it has produced)

Both rates come from the cost model calibrated online on measured steps. The remaining output is
re-estimated every step from the predicted distribution (see length_distribution.py), so a request
that outlives its prediction is not pinned at the head of the queue.

Hysteresis (no thrash): a waiting request displaces a running one only if
    remaining_s(waiting) < (1 - MIN_RELATIVE_GAIN) * remaining_s(running)     and
    remaining_s(running) - remaining_s(waiting) > victim_cost_s(running) + MIN_GAIN_STEPS * decode_step_s
i.e. it must be clearly shorter, and the time saved must pay for setting the victim's KV aside:
recomputing it, or swapping it out and back where the memory manager would do that more cheaply.
The scheduler adds a bound of its own: the victim's wait to resume, from the rank it re-enters the
queue with (requeue_key), must stay within about one decode step per output token of the victim's
(displacement.py's deferral bound).
Victims (the running batch's rank, priority_keys): when KV runs short the scheduler preempts the
worst-ranked running request, and under recompute its computed KV is thrown away and computed
again: GPU time taken from every request in the batch. So a running request ranks by
    max(0, remaining_s - RECOMPUTE_WASTE_WEIGHT * batch size * prefill_s_per_token * computed tokens)
the work it has left, less the aggregate delay its eviction would cause (weighted 8: measured).
Ranking victims by remaining_s alone evicted the long requests that had run longest: 3x fcfs's
recomputed tokens at 90% load and ~2% less capacity than fcfs, so at 100% of fcfs's capacity alise
was overloaded, which its 60 s promotion then showed as a p99 TTFT of 26-60 s (issue 19). With the
waste term (ShareGPT, 4 GB KV, 100% load, seed 0): p99 TTFT 60 -> 2.1 s (fcfs 4.3 s), requests
missing the 1 s / 100 ms SLO 4.7% -> 1.6% (fcfs 53%), p99 normalized latency 119 -> 37 ms/token,
at weight 16; weights 4 and 64 did worse then (p99 TTFT 5.0 s and 52 s). With TTFT-slack promotion
(below) the weight is 8: urgent admissions bring predicted-long requests in while KV is short, and
at 16 the victim rank then evicts them right after their first token (the p99 normalized tail);
at 8 (sharegpt-heldout, shipped predictor, 8,000 requests x 8 seeds, 95% load) alise keeps 92% / 91%
of the oracle's p99 normalized gain (Poisson / gamma CV 2) against 89% / 88% at 16, with the same
SLO misses and closed-loop capacity (docs/benchmarks/sim/README.md). The waiting queue is unaffected.

Readmission headroom (readmit_headroom_tokens = 8; the scheduler applies it, readmission.py): a
preempted request comes back only while the pool keeps 8 tokens per running request free. The victim rank
above evicts, when KV runs short, the request predicted longest with the least computed KV: with the
shipped predictor's compressed predictions (below), often a mid-length request just readmitted, which the
scheduler let back in as soon as its blocks fit and evicted again at the next shortage. On sharegpt-heldout
at 95% load (shipped predictor, 8,000 requests, seeds 0-3) the requests in the p99 normalized-latency
tail had been preempted ~6 times each (88% of them, against 12% of all requests), 78% of it by KV
shortage. With 8 tokens: preemptions ~3x fewer, p99 normalized latency 18.6 -> 16.6 ms/token
(Poisson) and 44.2 -> 34.0 (gamma CV 2), SLO misses the same or fewer; 4, 16 and 32 tokens measured
16.6-17.4 / 34.4-38.0 (docs/benchmarks/sim/README.md). fcfs and mlfq keep 0 (vLLM's behaviour, the
baseline); the engine's --readmit-headroom-tokens sets it for any policy.

TTFT aging (aging_horizon_s = H, default 30 s; inf turns it off): a waiting request's key is the deadline
    wait_started_s + min(remaining_s, H)
(earliest deadline first, each request's deadline its own remaining time, capped at H, after it
started waiting), static while it waits, so the waiting queue's invariant holds. Measured
(docs/benchmarks/sim/README.md, 8,000 requests x 4 seeds): H = 30 s brings alise's p99 TTFT at 100%
load with bursty arrivals from 48.8 s (the 60 s promotion) to 9.8 s, under fcfs's 13.4 s, and moves
the other loads' figures within their intervals; H of 2-16 s cost capacity and most of the
normalized-latency gain.

TTFT-slack promotion (ttft_target_s = T, default 1 s; ttft_lead_s = L, default 0.25 s; T = inf turns it
off): a waiting request without a first token becomes urgent L before its TTFT deadline
arrival_time_s + T and ranks ahead of every aged key, urgent requests by deadline (earliest first);
when the deadline passes without a first token it gets its aged key back: a request that has missed
its target spends no one's capacity ahead of the others (the SLO counts it missed either way). The
waiting queue does both as re-key events (waiting_queue.py), so keys never change silently. Why:
with the shipped predictor's predictions (compressed toward the mean: predicted p5 / p50 / p95 127 /
329 / 509 tokens against true 24 / 287 / 882) the requests missing the 1 s / 100 ms SLO are all TTFT
misses of mid-length and short requests predicted long; shortest-predicted-first keeps them waiting
while they could still make it. T is the headline's TTFT bound (DistServe's 1 s, `--ttft-slo-s`);
L = 0.25 s was measured against 0.5 and 0.75 s (docs/benchmarks/sim/README.md).

Worst-case wait, both rules on: a request that starts waiting at t0 is overtaken only by requests
whose aged key is earlier (they entered the queue before t0 + H) and by urgent ones (each within L of
its own deadline when it overtakes; at most the arrivals of an interval L + the time it waits, a
finite set at any load the engine sustains), and never later than the scheduler's starvation
promotion allows: at max_wait_s it is promoted, ahead of every urgent request, then waits only for
the requests promoted before it (common to all policies; tests/test_scheduler_ttft_window.py checks
it with urgent arrivals at twice what the seats serve).
"""

from __future__ import annotations

import math

from services.engine.request import Request
from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.scheduler.policy import PolicyName, SchedulingPolicy
from services.engine.scheduler.waiting_queue import TtftWindow

MIN_RELATIVE_GAIN = 0.25  # a displacing request must be at least 25% shorter ...
MIN_GAIN_STEPS = 4.0  # ... and save at least this many decode steps beyond the victim's recompute
RECOMPUTE_WASTE_WEIGHT = 8.0  # victim ranking: see the module docstring
DEFAULT_AGING_HORIZON_S = 30.0  # TTFT aging horizon H, seconds (see the module docstring)
DEFAULT_TTFT_TARGET_S = 1.0  # TTFT-slack promotion's target, seconds (see the module docstring)
DEFAULT_TTFT_LEAD_S = 0.25  # ... urgent from this long before it, seconds
DEFAULT_READMIT_HEADROOM_TOKENS = 8  # readmission headroom per running request (see the module docstring)


class AlisePolicy(SchedulingPolicy):
    """Ranks by predicted remaining time (seconds)."""

    name = PolicyName.ALISE
    preempts_for_waiting = True
    readmit_headroom_tokens = DEFAULT_READMIT_HEADROOM_TOKENS
    cost_model: OnlineStepCostModel

    def __init__(
        self,
        cost_model: OnlineStepCostModel,
        aging_horizon_s: float | None = None,
        ttft_target_s: float | None = None,
        ttft_lead_s: float | None = None,
    ) -> None:
        """None = the default of each; aging_horizon_s or ttft_target_s = inf turns that rule off."""
        self.cost_model = cost_model
        self.aging_horizon_s = DEFAULT_AGING_HORIZON_S if aging_horizon_s is None else aging_horizon_s
        if not self.aging_horizon_s > 0:
            raise ValueError(f"aging_horizon_s must be > 0 (inf = no aging), got {self.aging_horizon_s}")
        target_s = DEFAULT_TTFT_TARGET_S if ttft_target_s is None else ttft_target_s
        lead_s = min(target_s, DEFAULT_TTFT_LEAD_S) if ttft_lead_s is None else ttft_lead_s
        self.ttft_window = None if target_s == math.inf else TtftWindow(target_s, lead_s)

    def remaining_output_tokens(self, request: Request, num_generated: int) -> float:
        """Predicted output tokens still to come (re-estimated from the distribution, capped by
        max_tokens); priority_keys inlines the same for the running batch."""
        return request.predicted_remaining_tokens

    def remaining_s(self, request: Request) -> float:
        """Estimated seconds of work left (see the module docstring)."""
        cost = self.cost_model
        num_generated = len(request.output_token_ids)
        uncomputed = len(request.prompt_token_ids) + num_generated - request.num_computed_tokens
        return cost.prefill_s_per_token * uncomputed + cost.decode_step_s * self.remaining_output_tokens(
            request, num_generated
        )

    def priority_key(self, request: Request) -> float:
        """Rank in the waiting queue (the scheduler calls it only there; priority_keys ranks the
        running batch): remaining_s, or with a TTFT aging horizon H the deadline
        wait_started_s + min(remaining_s, H), static while the request waits."""
        remaining_s = self.remaining_s(request)
        horizon = self.aging_horizon_s
        if horizon == math.inf:
            return remaining_s
        return request.wait_started_s + (remaining_s if remaining_s < horizon else horizon)

    def priority_keys(self, requests: list[Request]) -> list[float]:
        """Ranks of the running batch (every step; the worst is the first victim when KV runs short):
        remaining_s less the waste of preempting it (see the module docstring), never aged, with the
        per-request calls inlined: a quarter of the step's scheduling time otherwise."""
        prefill_s, decode_s = self.cost_model.prefill_s_per_token, self.cost_model.decode_step_s
        waste_s_per_token = RECOMPUTE_WASTE_WEIGHT * len(requests) * prefill_s
        keys: list[float] = []
        append = keys.append
        for request in requests:
            num_generated = len(request.output_token_ids)
            # never None after Request.__post_init__ (no check in this loop: it runs for every request every step)
            remaining = request.length_distribution.expected_remaining_tokens(num_generated)  # type: ignore[union-attr]
            limit = request.sampling.max_tokens - num_generated
            computed = request.num_computed_tokens
            key = (
                prefill_s * (len(request.prompt_token_ids) + num_generated - computed)
                + decode_s * (limit if remaining > limit else remaining)
                - waste_s_per_token * computed
            )
            append(key if key > 0.0 else 0.0)
        return keys

    def displaces(self, waiting: Request, running: Request, victim_cost_s: float) -> bool:
        waiting_s, running_s = self.remaining_s(waiting), self.remaining_s(running)
        if waiting_s >= (1.0 - MIN_RELATIVE_GAIN) * running_s:
            return False
        return running_s - waiting_s > victim_cost_s + MIN_GAIN_STEPS * self.cost_model.decode_step_s

    def requeue_key(self, running: Request, now_s: float, victim_cost_s: float) -> float:
        """priority_key of `running` re-entering the queue now, its setting-aside cost added to its
        remaining time (a recompute victim's KV is all to compute again)."""
        remaining_s = self.remaining_s(running) + victim_cost_s
        horizon = self.aging_horizon_s
        if horizon == math.inf:
            return remaining_s
        return now_s + (remaining_s if remaining_s < horizon else horizon)


class SrptOraclePolicy(AlisePolicy):
    """ALISE with the true remaining length: an upper bound for benchmarks, not for production.

    The truth is max_tokens minus the tokens produced, which is exact under the benchmark method
    (ignore_eos, max_tokens = the dataset's real output length) and only an upper bound otherwise."""

    name = PolicyName.SRPT_ORACLE

    def remaining_output_tokens(self, request: Request, num_generated: int) -> float:
        return float(request.sampling.max_tokens - num_generated)

    def priority_keys(self, requests: list[Request]) -> list[float]:
        waste_s_per_token = RECOMPUTE_WASTE_WEIGHT * len(requests) * self.cost_model.prefill_s_per_token
        return [max(0.0, self.remaining_s(r) - waste_s_per_token * r.num_computed_tokens) for r in requests]


def with_ttft_target(policy: SchedulingPolicy, ttft_target_s: float) -> SchedulingPolicy:
    """The policy with TTFT-slack promotion at ttft_target_s (inf: off), its other settings kept; policies
    without the rule (fcfs, mlfq) as they are. The engine's --ttft-target-s; the simulator sets it per shape."""
    if not isinstance(policy, AlisePolicy):
        return policy
    return type(policy)(policy.cost_model, policy.aging_horizon_s, ttft_target_s)
