"""What drafts cost, measured online from the engine's own decode steps, and how many are worth feeding.

Why not the step-cost fit (scheduler/cost_model.py): it prices a step by its fed tokens, and its per-token
slope is set mostly by prefill chunks (hundreds of tokens, only the last one through the LM head). A verify
is dearer than that on CPU: each verifying request leaves the batched decode attention for its own
per-request SDPA pass over its whole context (attention.attend_mixed), and every draft goes through the
LM head. Measured on SmolLM2-135M (bf16, 1 thread, batch 16; docs/benchmarks/spec/README.md): the fit
priced the verify drafts of a batch-16 step at a fraction of what they added, so the batch-level turn-down
never set k to 0 there, and drafting slowed decoding to 0.74x.

So the meter fits decode-only steps (no prefill tokens) on their own terms:

    step_s = base_s + per_decode_s * decodes + per_verify_s * verifies + per_draft_s * drafts

(non-negative least squares over a window of recent decode-only steps; a column that does not vary in
the window is left out: while the batch holds its size, the step-cost fit's per-token slope splits the
plain step into base and decodes). Until it has enough varied steps
it reads the step-cost fit (per_verify_s 0, a draft priced as a fed token): the behaviour before, which
drafts, and so measures.

How many drafts (num_drafts_worth): a decode's share of a plain step of this batch, plain_step_s(n) / n,
yields one token; verifying m drafts adds verify_s(m) = per_verify_s + m per_draft_s and yields 1 +
accepted(m) (two-rate acceptance); k* maximises that decode's tokens per second, so drafts pay only when

    expected accepted drafts(k*) x seconds per output token  >  per_verify_s + k* per_draft_s

At batch 1 a decode's share is a whole step and drafts are nearly free; at batch 16 on CPU the share is a
sixteenth of a step and a verify's own cost is of that order, so only long, likely copies pass. A request
whose proposal is shorter than k* verifies it only if it is expected to save time at the batch's seconds
per token (expected_savings_s).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from services.engine.scheduler.cost_model import OnlineStepCostModel, nonnegative_least_squares


@dataclass(frozen=True)
class DraftCostConfig:
    window_steps: int = 256  # recent decode-only steps the fit covers
    refit_every_steps: int = 8  # decode-only steps between refits
    min_steps_to_fit: int = 16  # decode-only steps, some with drafts and some without, before the first fit
    # Steps in a row in which the cost rule turned every proposal down, before one probe step lets the
    # most promising proposal through anyway: costs and acceptance are re-measured, so a batch that stopped
    # drafting can start again (an earlier bug: a batch that stopped never re-measured).
    probe_every_steps: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps_to_fit <= self.window_steps:
            raise ValueError("need 1 <= min_steps_to_fit <= window_steps")
        if self.refit_every_steps < 1 or self.probe_every_steps < 1:
            raise ValueError("refit_every_steps and probe_every_steps must be >= 1")


@dataclass(frozen=True)
class DraftCosts:
    """A decode-only step's cost terms, seconds; all >= 0."""

    base_s: float
    per_decode_s: float  # each request that decodes (verifying or not)
    per_verify_s: float  # on top of that, each request that verifies drafts
    per_draft_s: float  # each draft token fed

    def plain_step_s(self, num_decodes: int) -> float:
        return self.base_s + self.per_decode_s * num_decodes

    def verify_s(self, num_drafts: int) -> float:
        """What one request verifying num_drafts drafts adds to a step (0 for no drafts)."""
        return self.per_verify_s + self.per_draft_s * num_drafts if num_drafts > 0 else 0.0


class DraftCostMeter:
    """Decode-only steps in (what the speculator knows of them, timed by the step-cost model), costs out."""

    def __init__(self, cost_model: OnlineStepCostModel, config: DraftCostConfig | None = None) -> None:
        self.config = config or DraftCostConfig()
        self._cost_model = cost_model
        self._steps: collections.deque[tuple[int, int, int, float]] = collections.deque(maxlen=self.config.window_steps)
        self._since_refit = 0
        self._fitted: DraftCosts | None = None
        # The step planned last: (cost model's num_observed then, decodes, verifies, drafts), None if none
        self._pending: tuple[int, int, int, int] | None = None

    @property
    def fitted(self) -> bool:
        return self._fitted is not None

    def costs(self, num_kv_tokens_read: int) -> DraftCosts:
        """The fitted terms, or (before a fit) the step-cost fit's, with the decodes' KV read in the base."""
        if self._fitted is not None:
            return self._fitted
        fit = self._cost_model.coefficients
        base_s = fit.base_s + fit.per_kv_token_s * num_kv_tokens_read
        return DraftCosts(base_s, fit.per_token_s, 0.0, fit.per_token_s)

    def planned(self, num_decodes: int, num_verifies: int, num_drafts: int) -> None:
        """What the coming step will feed if scheduled as planned (called before the step runs)."""
        self._pending = (self._cost_model.num_observed, num_decodes, num_verifies, num_drafts)

    def settle(self) -> None:
        """Pairs the planned step with its measured time, if it ran as planned: exactly one step was
        observed since, and it fed the decodes and drafts only (no prefill chunk, no draft cut)."""
        pending, self._pending = self._pending, None
        observed = self._cost_model.last_observed
        if pending is None or observed is None or self._cost_model.num_observed != pending[0] + 1:
            return
        _, num_decodes, num_verifies, num_drafts = pending
        if observed[0] != num_decodes + num_drafts:
            return
        self.record(num_decodes, num_verifies, num_drafts, observed[2])

    def record(self, num_decodes: int, num_verifies: int, num_drafts: int, step_s: float) -> None:
        """One decode-only step: num_decodes requests fed, num_verifies of them with num_drafts drafts in all."""
        if step_s <= 0 or num_decodes <= 0:
            return
        self._steps.append((num_decodes, num_verifies, num_drafts, step_s))
        self._since_refit += 1
        if self._since_refit >= self.config.refit_every_steps:
            self._since_refit = 0
            self._refit()

    def _refit(self) -> None:
        if len(self._steps) < self.config.min_steps_to_fit:
            return
        data = np.asarray(self._steps, dtype=np.float64)
        if not (np.any(data[:, 1] == 0) and np.any(data[:, 1] > 0)):
            return  # steps with and without drafts both needed to tell a verify from a decode
        full = np.column_stack([np.ones(len(data)), data[:, :3]])
        columns = [0]
        for column in (1, 2, 3):  # a column adds a term only where it varies apart from the others
            if np.linalg.matrix_rank(full[:, columns + [column]]) == len(columns) + 1:
                columns.append(column)
        solution = nonnegative_least_squares(full[:, columns], data[:, 3])
        if solution is None:
            return
        terms = np.zeros(4)
        terms[columns] = solution
        if 1 not in columns:  # one batch size n in the window: its plain step is known, not how it scales;
            # the step-cost fit's per-token slope splits it (a batch that shrinks then values a token more)
            num_decodes = data[0, 0]
            terms[1] = min(self._cost_model.coefficients.per_token_s, terms[0] / num_decodes)
            terms[0] -= terms[1] * num_decodes
        fitted = DraftCosts(*(float(term) for term in terms))
        if fitted.plain_step_s(int(data[-1, 0])) > 0.0:  # a plain step that costs nothing is no fit
            self._fitted = fitted


def num_drafts_worth(
    costs: DraftCosts, num_decodes: int, first_rate: float, continuation_rate: float, max_drafts: int
) -> int:
    """The k in [0, max_drafts] that maximises a decode's expected output tokens per second when every decode
    of the batch verifies k drafts (the smallest k on ties; two-rate acceptance model, adaptive_drafting.py):

        k* = argmax_k (1 + accepted(k)) / (plain_step_s(n) / n + verify_s(k))
    """
    if num_decodes <= 0 or max_drafts <= 0:
        return 0
    tokens = 1.0 + _expected_accepted(first_rate, continuation_rate, max_drafts)
    return int(np.argmax(tokens / _decode_s(costs, num_decodes, max_drafts)))


def seconds_per_token(
    costs: DraftCosts, num_decodes: int, first_rate: float, continuation_rate: float, num_drafts: int
) -> float:
    """Expected seconds per output token of a decode that verifies num_drafts drafts in this batch."""
    accepted = _expected_accepted(first_rate, continuation_rate, num_drafts)[num_drafts]
    return float(_decode_s(costs, num_decodes, num_drafts)[num_drafts] / (1.0 + accepted))


def expected_savings_s(
    costs: DraftCosts, first_rate: float, continuation_rate: float, max_drafts: int, s_per_token: float
) -> np.ndarray:
    """[max_drafts + 1] seconds m drafts of one request are expected to save, accepted(m) x s_per_token -
    verify_s(m) (m = 0: 0). With s_per_token the batch's at its k*, m > 0 saves only if it raises the
    batch's tokens per second: how a proposal shorter than k* is judged."""
    cost_s = costs.per_verify_s + costs.per_draft_s * np.arange(max_drafts + 1)
    cost_s[0] = 0.0
    return _expected_accepted(first_rate, continuation_rate, max_drafts) * s_per_token - cost_s


def _expected_accepted(first_rate: float, continuation_rate: float, max_drafts: int) -> np.ndarray:
    """[max_drafts + 1] expected accepted drafts of a verify of m drafts: a1 (1 + c + ... + c^(m-1))."""
    first, later = min(max(first_rate, 0.0), 1.0), min(max(continuation_rate, 0.0), 1.0)
    reached = first * later ** np.arange(max_drafts)  # P(draft i + 1 accepted)
    return np.concatenate([[0.0], np.cumsum(reached)])


def _decode_s(costs: DraftCosts, num_decodes: int, max_drafts: int) -> np.ndarray:
    """[max_drafts + 1] seconds one decode of the batch takes with m drafts: its share of a plain step + verify_s(m)."""
    share_s = costs.plain_step_s(num_decodes) / num_decodes
    verify_s = costs.per_verify_s + costs.per_draft_s * np.arange(max_drafts + 1)
    verify_s[0] = 0.0
    return np.maximum(share_s + verify_s, 1e-12)
