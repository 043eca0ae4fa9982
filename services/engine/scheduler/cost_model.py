"""Step-time cost model, calibrated online from the engine's own measured steps.

A step's time is modelled as linear in what it does:

    step_s = base_s + per_token_s * num_batched_tokens + per_kv_token_s * num_kv_tokens_read

(base: weights read once per step plus launch overheads; per token: the matmuls of each fed token;
per KV token: attention reading the cache of every scheduled request). The speculative policy turns a
request's remaining work into seconds with it:

    remaining_s = prefill_s_per_token * uncomputed tokens + decode_step_s * remaining output tokens

where decode_step_s is the recent mean step time over the output tokens a step gives a running
request (one, or 1 + accepted drafts per verify with speculative decoding: tokens_per_decode_step),
and every step of the batch costs the same to each of its requests. A verify's draft tokens are fed
tokens like any other, so the step-time fit prices them.

Calibration: least squares over the last `window` steps, refitted every `refit_every` steps; until
enough varied steps are seen, the prior coefficients hold. The two published rates change only when
a refit moves one of them by more than REPUBLISH_RELATIVE_CHANGE, and `version` bumps with them, so
callers that cache priorities (the scheduler's waiting queue) know when to recompute them, and do
not re-rank 1,000 waiting requests for a 1% wobble. Plain Python + numpy.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepCostCoefficients:
    """One fitted (or prior) set of coefficients; all >= 0."""

    base_s: float  # fixed cost of a step, seconds
    per_token_s: float  # cost of each fed token (prompt chunk or decode input), seconds
    per_kv_token_s: float  # cost of each cached token read by attention, seconds

    def step_time_s(self, num_batched_tokens: int, num_kv_tokens_read: int) -> float:
        return self.base_s + self.per_token_s * num_batched_tokens + self.per_kv_token_s * num_kv_tokens_read


REPUBLISH_RELATIVE_CHANGE = 0.05

# A CPU-ish prior: 10 ms per step, 0.2 ms per fed token; replaced after the first refit.
DEFAULT_PRIOR = StepCostCoefficients(base_s=0.010, per_token_s=2e-4, per_kv_token_s=1e-7)


class OnlineStepCostModel:
    """Measured steps in, coefficients and per-request cost rates out."""

    def __init__(
        self,
        prior: StepCostCoefficients = DEFAULT_PRIOR,
        *,
        window: int = 512,
        refit_every: int = 64,
        min_steps_to_fit: int = 32,
        step_time_smoothing: float = 0.05,
    ) -> None:
        if window < min_steps_to_fit or refit_every <= 0 or not 0 < step_time_smoothing <= 1:
            raise ValueError("need window >= min_steps_to_fit, refit_every > 0, smoothing in (0, 1]")
        self.coefficients = prior
        self.version = 0  # bumps when prefill_s_per_token / decode_step_s change
        self._steps: collections.deque[tuple[int, int, float]] = collections.deque(maxlen=window)
        self._refit_every = refit_every
        self._min_steps_to_fit = min_steps_to_fit
        self._smoothing = step_time_smoothing  # weight of the newest step in the mean step time
        self._since_refit = 0
        # The last step observed and how many were, for readers that pair a step with what they know of it
        # (the speculator's draft-cost meter: which of the step's tokens were drafts; on CPU it times steps
        # on process CPU time, robust to other jobs on the machine). Not used by the fit.
        self.num_observed = 0
        self.last_observed: tuple[int, int, float] | None = None
        self.last_observed_cpu_s = 0.0  # the process's CPU time when the last step was observed (its end)
        # Whether observe() reads that clock: only a reader that times steps on CPU time needs it, and it is
        # a system call on every step (~4 us on this VM against a ~0.3 ms host step).
        self.records_cpu_time = False
        self.mean_step_s = prior.step_time_s(1, 0)  # exponentially weighted mean of measured steps
        # The two rates policies read, as plain attributes (read for every request every step);
        # they change only at a refit, together with `version`.
        self.prefill_s_per_token = prior.per_token_s  # marginal cost of one more prompt token in a step
        # Output tokens a sampling request gains per step: 1, more with speculative decoding (accepted
        # drafts), exponentially weighted like mean_step_s.
        self.tokens_per_decode_step = 1.0
        # Seconds a running request waits per output token: the mean step time over the tokens a step
        # yields, at the last refit.
        self.decode_step_s = self.mean_step_s

    def observe(self, num_batched_tokens: int, num_kv_tokens_read: int, step_s: float) -> None:
        """Records one measured step; refits every refit_every steps."""
        if step_s <= 0 or num_batched_tokens <= 0:
            return
        self.num_observed += 1
        self.last_observed = (num_batched_tokens, num_kv_tokens_read, step_s)
        if self.records_cpu_time:
            self.last_observed_cpu_s = time.process_time()
        self._steps.append(self.last_observed)
        self.mean_step_s += self._smoothing * (step_s - self.mean_step_s)
        self._since_refit += 1
        if self._since_refit >= self._refit_every:
            self._since_refit = 0
            self._refit()

    def observe_decode_yield(self, num_sampling_requests: int, num_output_tokens: int) -> None:
        """Records the output tokens one step gave its sampling requests (called with speculative
        decoding only: without it every sampling request gains exactly one token)."""
        if num_sampling_requests > 0:
            observed = num_output_tokens / num_sampling_requests
            self.tokens_per_decode_step += self._smoothing * (observed - self.tokens_per_decode_step)

    def _refit(self) -> None:
        if len(self._steps) >= self._min_steps_to_fit:
            fitted = _least_squares(self._steps)
            if fitted is not None:
                self.coefficients = fitted
        decode_step_s = self.mean_step_s / self.tokens_per_decode_step
        if _moved(self.prefill_s_per_token, self.coefficients.per_token_s) or _moved(self.decode_step_s, decode_step_s):
            self.prefill_s_per_token = self.coefficients.per_token_s
            self.decode_step_s = decode_step_s
            self.version += 1


def _moved(published: float, fitted: float) -> bool:
    return abs(fitted - published) > REPUBLISH_RELATIVE_CHANGE * max(abs(published), 1e-12)


def _least_squares(steps: Iterable[tuple[float, float, float]]) -> StepCostCoefficients | None:
    """Non-negative least squares; None when the steps do not vary enough to separate the terms.

    Clipping the unconstrained fit instead (as before) is not a fit: on CPU steps it gave zero base
    cost and an implausible KV cost, which misprices a speculative verify against a decode."""
    data = np.asarray(steps, dtype=np.float64)
    design = np.column_stack([np.ones(len(data)), data[:, 0], data[:, 1]])
    columns = [0, 1, 2] if np.linalg.matrix_rank(design) == 3 else [0, 1]  # fixed-batch decodes: no KV term
    if np.linalg.matrix_rank(design[:, columns]) < len(columns):
        return None
    solution = nonnegative_least_squares(design[:, columns], data[:, 2])
    if solution is None:
        return None
    coefficients = np.zeros(3)
    coefficients[columns] = solution
    base, per_token, per_kv = (float(value) for value in coefficients)
    return StepCostCoefficients(base, per_token, per_kv)


def nonnegative_least_squares(design: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """argmin ||design x - target|| over x >= 0, for a few columns; None if no subset fits without a
    negative term. Exact: the non-negative optimum is the unconstrained fit on some subset of the
    columns, so every subset's fit is tried and the best one with no negative coefficient is kept."""
    columns = list(range(design.shape[1]))
    best: tuple[float, np.ndarray] | None = None
    for subset in _nonempty_subsets(columns):
        solution, *_ = np.linalg.lstsq(design[:, subset], target, rcond=None)
        if np.any(solution < 0.0):
            continue
        residual = float(np.sum((design[:, subset] @ solution - target) ** 2))
        if best is None or residual < best[0]:
            coefficients = np.zeros(len(columns))
            coefficients[subset] = solution
            best = (residual, coefficients)
    return None if best is None else best[1]


def _nonempty_subsets(columns: list[int]) -> list[list[int]]:
    return [[c for bit, c in enumerate(columns) if mask >> bit & 1] for mask in range(1, 1 << len(columns))]
