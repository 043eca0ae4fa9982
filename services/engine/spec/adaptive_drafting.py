"""How many drafts to verify: per request (stop drafting where drafts keep failing) and per batch
(stop drafting where verification costs more than it saves). Plain Python + numpy (no torch), so the
scheduler can call it.

Acceptance model: each draft is accepted with probability a, independently, until the first
rejection. A verify with k drafts then emits 1 + accepted tokens, in expectation

    E[tokens per verify] = sum_{i=0..k} a^i = 1 + a + a^2 + ... + a^k

and each verify is a run of Bernoulli trials: m accepted drafts are m successes, followed by one
failure unless all k were accepted. So a is estimated as successes / trials (not accepted / drafted,
which would count the drafts after a rejection, never tested, as failures).

How many drafts pay is judged on a two-rate (Markov) refinement: the first draft is accepted with
probability a1, each later one, given the one before it was, with probability c:

    E[tokens per verify] = 1 + a1 (1 + c + c^2 + ... + c^(k-1))

For prompt lookup the two differ widely: a draft that starts right is usually a copy in progress and
goes on (n-gram drafts replayed on SmolLM2's greedy outputs: a1 0.48-0.71, c 0.86-0.96), which one
pooled rate hides: at a = 0.5 and the measured batch-1 verify costs the one-rate k is 3, the two-rate
k with c = 0.9 is 14. Replayed under the engine's rules (spec_bound_engine.py) the batch-1 speedup
moves by <= 0.01x, because the drafter's own length rule (2 drafts per matched token) binds first;
it decides k where drafts are long and the batch is larger. With c = a1 it is the independent model.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from services.engine.scheduler.cost_model import StepCostCoefficients


@dataclass(frozen=True)
class AdaptiveDraftingConfig:
    """When a request stops drafting and when it tries again."""

    min_acceptance_rate: float = 0.2  # estimated per-draft acceptance below which a request pauses
    min_verifies: int = 4  # verifies with drafts, since drafting (re)started, before a request is judged
    ema_weight: float = 0.25  # weight of the newest verify in the acceptance estimate
    initial_backoff_steps: int = 8  # steps without drafts after the first failing judgement
    max_backoff_steps: int = 512  # the pause doubles on each consecutive failing judgement, up to this
    # The batch's expected per-draft acceptance while no drafting request has an estimate yet (n-gram
    # drafts on ShareGPT replies: about 0.6; an optimistic start, since only drafting measures it).
    prior_acceptance_rate: float = 0.5
    # The prior's weight in the batch's pooled estimate, in Bernoulli trials (a verify of k drafts is 1 to k
    # trials). Without it one rejected first draft pools to a rate of 0, where every k > 0 only costs, so
    # batch_num_drafts picks k = 0 and nothing ever re-measures: at batch 1 a request then never drafted
    # again (measured: 1 verify in 95 steps on a summarise prompt whose drafts are accepted 59% of the
    # time). Requests whose drafts keep failing are paused per request instead (min_acceptance_rate).
    prior_weight_trials: float = 2.0
    # The batch's k from the two-rate model (first draft, then each next one given the last; module
    # docstring) rather than from one pooled rate; False = the one-rate model (`alise bench spec`'s
    # "@prev" variant: the rules before the two-rate model).
    two_rate_model: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_acceptance_rate <= 1.0:
            raise ValueError(f"min_acceptance_rate must be in [0, 1], got {self.min_acceptance_rate}")
        if not 0.0 <= self.prior_acceptance_rate <= 1.0:
            raise ValueError(f"prior_acceptance_rate must be in [0, 1], got {self.prior_acceptance_rate}")
        if self.prior_weight_trials < 0.0:
            raise ValueError(f"prior_weight_trials must be >= 0, got {self.prior_weight_trials}")
        if self.min_verifies < 1:
            raise ValueError(f"min_verifies must be >= 1, got {self.min_verifies}")
        if not 0.0 < self.ema_weight <= 1.0:
            raise ValueError(f"ema_weight must be in (0, 1], got {self.ema_weight}")
        if not 1 <= self.initial_backoff_steps <= self.max_backoff_steps:
            raise ValueError("need 1 <= initial_backoff_steps <= max_backoff_steps")


@dataclass
class _RequestAcceptance:
    """One request's drafting record. ema_* cover the verifies since drafting last (re)started."""

    next_backoff_steps: int  # the pause after the next failing judgement
    num_drafted: int = 0  # drafts verified over the request's life
    num_accepted: int = 0  # of which accepted
    num_verifies: int = 0  # verifies with drafts since drafting (re)started
    ema_successes: float = 0.0  # accepted drafts per verify, exponentially weighted
    ema_trials: float = 0.0  # Bernoulli trials per verify (accepted + 1 if one was rejected), same weights
    ema_first_accepted: float = 0.0  # whether a verify's first draft was accepted (0/1), same weights
    ema_later_successes: float = 0.0  # accepted drafts after the first accepted one, per verify, same weights
    ema_later_trials: float = 0.0  # trials among those later drafts per verify, same weights
    paused_steps_left: int = 0  # steps still without drafts

    def acceptance_rate(self) -> float | None:
        return self.ema_successes / self.ema_trials if self.ema_trials > 0 else None

    def restart(self) -> None:
        self.num_verifies, self.ema_successes, self.ema_trials = 0, 0.0, 0.0
        self.ema_first_accepted = self.ema_later_successes = self.ema_later_trials = 0.0

    def update(self, num_drafted: int, num_accepted: int, weight: float) -> None:
        """Moves every estimate toward one verify's outcome by weight (1 for the first verify)."""
        rejected = 1 if num_accepted < num_drafted else 0
        later_successes = max(num_accepted - 1, 0)
        later_trials = later_successes + (rejected if num_accepted >= 1 else 0)
        self.ema_successes += weight * (num_accepted - self.ema_successes)
        self.ema_trials += weight * (num_accepted + rejected - self.ema_trials)
        self.ema_first_accepted += weight * (min(num_accepted, 1) - self.ema_first_accepted)
        self.ema_later_successes += weight * (later_successes - self.ema_later_successes)
        self.ema_later_trials += weight * (later_trials - self.ema_later_trials)


class AcceptanceTracker:
    """Per-request acceptance, and whether each request drafts this step.

    A request drafts until it has min_verifies verifies and its estimated acceptance is below
    min_acceptance_rate; it then drafts nothing for a backoff of steps (its own calls of num_drafts),
    after which it probes again with a fresh estimate. Each consecutive failing judgement doubles the
    backoff (up to max_backoff_steps); a passing judgement resets it. Not thread-safe: the engine
    thread owns it.
    """

    def __init__(self, config: AdaptiveDraftingConfig | None = None) -> None:
        self._config = config or AdaptiveDraftingConfig()
        self._requests: dict[Hashable, _RequestAcceptance] = {}

    def num_drafts(self, request_id: Hashable, max_drafts: int) -> int:
        """Drafts the request may propose this step: max_drafts, or 0 while it is paused. Call once per
        step the request decodes in (the pause counts these calls)."""
        state = self._state(request_id)
        if state.paused_steps_left > 0:
            state.paused_steps_left -= 1
            return 0
        return max(max_drafts, 0)

    def record(self, request_id: Hashable, num_drafted: int, num_accepted: int) -> None:
        """One verify's outcome: num_accepted of its num_drafted drafts were accepted (a verify without
        drafts is not recorded)."""
        if not 0 <= num_accepted <= num_drafted:
            raise ValueError(f"need 0 <= num_accepted ({num_accepted}) <= num_drafted ({num_drafted})")
        if num_drafted == 0:
            return
        state, config = self._state(request_id), self._config
        state.num_drafted += num_drafted
        state.num_accepted += num_accepted
        if state.paused_steps_left > 0:  # drafts proposed before the pause began: counted, not judged
            return
        state.update(num_drafted, num_accepted, 1.0 if state.num_verifies == 0 else config.ema_weight)
        state.num_verifies += 1
        if state.num_verifies >= config.min_verifies:
            self._judge(state)

    def _judge(self, state: _RequestAcceptance) -> None:
        config, rate = self._config, state.acceptance_rate()
        if rate is not None and rate < config.min_acceptance_rate:
            state.paused_steps_left = state.next_backoff_steps
            state.next_backoff_steps = min(2 * state.next_backoff_steps, config.max_backoff_steps)
            state.restart()
        elif state.num_verifies == config.min_verifies:  # a probe (or the first judgement) passed
            state.next_backoff_steps = config.initial_backoff_steps

    def acceptance_rate(self, request_id: Hashable) -> float | None:
        """The request's estimated per-draft acceptance since drafting (re)started; None before any."""
        state = self._requests.get(request_id)
        return state.acceptance_rate() if state is not None else None

    def batch_acceptance_rate(self, request_ids: Iterable[Hashable] | None = None) -> float:
        """The per-draft acceptance to expect from a batch (for batch_num_drafts): the estimates of the
        given requests (default: all tracked), pooled as successes / trials over those that draft (not
        paused) and have an estimate, with the config's prior counted as prior_weight_trials trials
        (so the prior alone when none has an estimate, and never 0 after one unlucky verify).

        A low pooled rate can hold k at 0 for a large batch, and then nothing re-measures it; the same
        rate gives a larger k at a smaller batch, so drafting resumes as the batch shrinks, and the
        estimates of finished (forgotten) requests leave the pool."""
        successes = trials = 0.0
        for state in self._drafting_states(request_ids):
            successes += state.ema_successes
            trials += state.ema_trials
        config = self._config
        if trials <= 0:
            return config.prior_acceptance_rate
        prior_successes = config.prior_acceptance_rate * config.prior_weight_trials
        return (successes + prior_successes) / (trials + config.prior_weight_trials)

    def batch_acceptance_model(self, request_ids: Iterable[Hashable] | None = None) -> tuple[float, float]:
        """(a1, c) of the two-rate model (module docstring) for a batch, pooled like
        batch_acceptance_rate over the requests that draft and have an estimate, each with the prior
        counted as prior_weight_trials trials."""
        first = first_trials = later = later_trials = 0.0
        for state in self._drafting_states(request_ids):
            first += state.ema_first_accepted
            first_trials += 1.0
            later += state.ema_later_successes
            later_trials += state.ema_later_trials
        config = self._config
        prior, weight = config.prior_acceptance_rate, config.prior_weight_trials
        if first_trials == 0:
            return prior, prior
        first_rate = (first + prior * weight) / (first_trials + weight)
        later_rate = (later + prior * weight) / (later_trials + weight) if later_trials + weight > 0 else prior
        return first_rate, later_rate

    def request_acceptance_models(
        self, request_ids: Sequence[Hashable], pooled: tuple[float, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per request, (a1, c) of the two-rate model: its own estimates since drafting (re)started, shrunk
        toward the batch's pooled (a1, c) as if the pool were prior_weight_trials verifies (a request with
        no estimate gets the pool's). A request in a long copy then drafts where the batch's average
        would not: at batch 16 on CPU a verify pays only for such copies (draft_cost.py)."""
        config = self._config
        weight, max_samples = config.prior_weight_trials, 1.0 / config.ema_weight  # an EMA holds ~1/w verifies
        first, later = np.full(len(request_ids), pooled[0]), np.full(len(request_ids), pooled[1])
        for index, request_id in enumerate(request_ids):
            state = self._requests.get(request_id)
            if state is None or state.ema_trials <= 0:
                continue
            samples = min(state.num_verifies, max_samples)
            first[index] = (state.ema_first_accepted * samples + pooled[0] * weight) / (samples + weight)
            later_trials = state.ema_later_trials * samples + weight
            later[index] = (state.ema_later_successes * samples + pooled[1] * weight) / later_trials
        return first, later

    def _drafting_states(self, request_ids: Iterable[Hashable] | None) -> Iterable[_RequestAcceptance]:
        """The given requests' (default: all tracked) states that draft now and have an estimate."""
        if request_ids is None:
            states: Iterable[_RequestAcceptance] = self._requests.values()
        else:
            states = (state for state in map(self._requests.get, request_ids) if state is not None)
        return (state for state in states if state.paused_steps_left == 0 and state.ema_trials > 0)

    def totals(self, request_id: Hashable) -> tuple[int, int]:
        """(drafts verified, drafts accepted) over the request's life; (0, 0) for an unknown request."""
        state = self._requests.get(request_id)
        return (state.num_drafted, state.num_accepted) if state is not None else (0, 0)

    def forget(self, request_id: Hashable) -> None:
        """Drops a finished, cancelled or failed request (unknown ids are ignored)."""
        self._requests.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._requests)

    def _state(self, request_id: Hashable) -> _RequestAcceptance:
        state = self._requests.get(request_id)
        if state is None:
            state = self._requests[request_id] = _RequestAcceptance(self._config.initial_backoff_steps)
        return state


def batch_num_drafts(
    num_decodes: int,
    acceptance_rate: float | Sequence[float] | np.ndarray,
    max_drafts: int,
    coefficients: StepCostCoefficients,
    *,
    num_other_tokens: int = 0,
    num_kv_tokens_read: int = 0,
    continuation_rate: float | Sequence[float] | np.ndarray | None = None,
) -> int:
    """The k in [0, max_drafts] that maximises the decode batch's expected output tokens per second.

    With num_decodes requests each verifying k drafts (acceptance a_r: one rate for all, or one per
    request) next to num_other_tokens prefill tokens:

        tokens(k) = sum_r sum_{i=0..k} a_r^i                   (or 1 + a_r sum_{i<k} c_r^i with
                                                                continuation_rate c_r: the two-rate model)
        step_s(k) = coefficients.step_time_s(num_other_tokens + num_decodes * (1 + k), num_kv_tokens_read)
        k* = argmax_k tokens(k) / step_s(k)        (the smallest k on ties)

    The KV read does not grow with k (a verify reads its cache once for its k + 1 queries). At batch 1
    a step costs mostly base_s (weights read once), so drafts are nearly free and k* is large; as the
    batch grows the per_token_s term dominates (compute-bound) and every draft costs about what a
    whole token does, so k* falls to 0 unless acceptance is high.
    """
    if num_decodes < 0 or max_drafts < 0:
        raise ValueError(f"num_decodes ({num_decodes}) and max_drafts ({max_drafts}) must be >= 0")
    if num_decodes == 0 or max_drafts == 0:
        return 0
    rates = _per_request(acceptance_rate, num_decodes, "acceptance_rate")
    later = rates if continuation_rate is None else _per_request(continuation_rate, num_decodes, "continuation_rate")
    num_drafts = np.arange(max_drafts + 1)
    # P(draft i accepted) = a c^(i-1) for i >= 1; the verify's own token (i = 0) always comes
    reached = np.concatenate([np.ones((num_decodes, 1)), rates[:, None] * later[:, None] ** num_drafts[None, :-1]], 1)
    tokens = np.cumsum(reached, axis=1).sum(axis=0)  # [max_drafts + 1]
    fed = num_other_tokens + num_decodes * (1 + num_drafts)
    step_s = coefficients.base_s + coefficients.per_token_s * fed + coefficients.per_kv_token_s * num_kv_tokens_read
    return int(np.argmax(tokens / np.maximum(step_s, 1e-12)))


def _per_request(rate: float | Sequence[float] | np.ndarray, num_decodes: int, name: str) -> np.ndarray:
    rates = np.clip(np.asarray(rate, dtype=np.float64), 0.0, 1.0)
    if rates.ndim > 1 or (rates.ndim == 1 and len(rates) != num_decodes):
        raise ValueError(f"{name} must be one rate or {num_decodes} rates, got shape {rates.shape}")
    return np.broadcast_to(rates, (num_decodes,))
