"""What drafts cost, measured online from the engine's own decode steps, and how many are worth feeding.

Why not the step-cost fit (scheduler/cost_model.py): it prices a step by its fed tokens, and its per-token
slope is set mostly by prefill chunks (hundreds of tokens, only the last one through the LM head). A verify
is dearer than that on CPU: every draft goes through the LM head, and until session 11 each verifying
request also left the batched decode attention for its own per-request SDPA pass over its whole context
(~10-12 ms per verify and step on SmolLM2-135M, bf16, 1 thread; now batched, short_query_attention.py:
~0 per verify, ~2.2 ms per draft at batch 16, services/bench/spec_verify_cost.py). The fit priced the
verify drafts of a batch-16 step at a fraction of what they added, so the batch-level turn-down never set
k to 0 there, and drafting slowed decoding to 0.74x (docs/benchmarks/spec/README.md).

So the meter fits decode-only steps (no prefill tokens) on their own terms:

    step_s = base_s + per_decode_s * decodes + per_verify_s * verifies + per_draft_s * drafts

(per_verify_s is fitted only with DraftCostConfig.fit_per_verify, else 0: see there; non-negative least
squares over a window of recent decode-only steps, one fit per batch-size class; a column that does not vary in the window is left out: while the batch holds its size, the step-cost fit's
per-token slope splits the plain step into base and decodes). Until it has enough varied steps
it reads the step-cost fit (per_verify_s 0, a draft priced as a fed token): the behaviour before, which
drafts, and so measures.

How many drafts, in two passes (Speculator._plan_drafts):
1. num_drafts_worth: a decode's share of a plain step of this batch, plain_step_s(n) / n, yields one token;
   verifying m drafts adds verify_s(m) = per_verify_s + m per_draft_s and yields 1 + accepted(m) (two-rate
   acceptance, each request's own shrunk toward the batch's: AcceptanceTracker.request_acceptance_models);
   each decode's k* maximises its tokens per second, and the decodes with k* > 0 propose up to k* drafts.
2. Each proposal is cut to the m that saves most, accepted(m) x value - verify_s(m), and dropped where no
   m saves. An accepted token saves its request a later decode (per_decode_s), and the step's fixed cost
   only where it shortens the batch: a group's steps last until its slowest request is done, so only the
   requests with the most output left (the critical path) save it, and only while all of them draft
   (critical_token_value_s; before session 12, and with DraftCostConfig.critical_path off, every decode
   saved it as far as the batch's decodes proposed: token_value_s).

At batch 1 a token is worth a whole step and drafts are nearly free; at batch 16 on CPU it is worth about
one decode and a verify's own cost is of that order, so only long, likely copies pass.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from services.engine.scheduler.cost_model import OnlineStepCostModel, nonnegative_least_squares


class StepClock(StrEnum):
    """What the meter times a step with."""

    WALL = "wall"  # the step-cost model's model time (forward + update; GPUs, where the host waits on the device)
    # the process's CPU time from the start of plan() (drafting included) to the step's end: a CPU engine's
    # steps, robust to other jobs sharing the cores (wall time on a loaded machine swings by 2-5x)
    PROCESS_CPU = "process-cpu"


@dataclass(frozen=True)
class DraftCostConfig:
    window_steps: int = 128  # recent decode-only steps each batch-size class's fit covers
    refit_every_steps: int = 8  # decode-only steps between refits
    min_steps_to_fit: int = 16  # decode-only steps of a class, some with drafts and some without, before its fit
    # Steps in a row in which the cost rule turned every proposal down, before one probe step lets the
    # most promising proposal through anyway: costs and acceptance are re-measured, so a batch that stopped
    # drafting can start again (an earlier bug: a batch that stopped never re-measured).
    probe_every_steps: int = 32
    # False: the turn-down before the meter (one k for the batch, batch_num_drafts on the step-cost fit,
    # pooled acceptance, no probe), kept for `alise bench spec`'s "@fit" column to measure against.
    measured: bool = True
    clock: StepClock = StepClock.WALL
    # False: an accepted token is worth a decode's full share of a plain step whatever share of the batch
    # drafts (as if every request drafted; `alise bench spec`'s "@share" column), not token_value_s's.
    closed_batch_value: bool = True
    # With closed_batch_value: the step's fixed cost is saved only by accepted tokens of the requests with the
    # most output left (the batch's critical path), while all of them draft (critical_token_value_s); the
    # others' tokens save a decode.
    # False: by every decode's alike, as far as the batch's decodes propose (token_value_s; "@batch" column).
    critical_path: bool = True
    # Fit a per-verifying-request term. Off: since verifies are attended in the batch
    # (short_query_attention.py) a verify adds only its drafts (measured ~0 per verify at batch 1, 4 and
    # 16), and verifies and drafts rise together in real steps, so a fit with both columns could put their
    # joint cost on either: at batch 16 it priced drafts at 0 and every verify drafted the full k (0.83-0.96x
    # of off). On: for a path where a verify has its own cost (one attention pass per request).
    fit_per_verify: bool = False

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
    """Decode-only steps in (what the speculator knows of them, timed by the step-cost model), costs out.

    One fit per batch-size class (1, 2-3, 4-7, 8-15, 16-31, ...: num_decodes.bit_length()): a verify's extra
    cost depends on the batch it joins (a decode's share of the batched work falls as the batch grows), so
    one line over every size misprices the largest (measured on CPU, forced drafts, verifies one SDPA each:
    ~0 ms per verify at batch 1, ~15 at 4, ~10 at 16, plus ~2 per draft; with verifies batched ~0 per verify
    at every size). A class without a fit borrows the
    nearest class's, and before any fit the step-cost fit's terms hold."""

    def __init__(self, cost_model: OnlineStepCostModel, config: DraftCostConfig | None = None) -> None:
        self.config = config or DraftCostConfig()
        self._cost_model = cost_model
        if self.config.clock is StepClock.PROCESS_CPU:
            cost_model.records_cpu_time = True  # the step ends this meter times on CPU
        self._classes: dict[int, _SizeClass] = {}
        # The step planned last: (cost model's num_observed then, decodes, verifies, drafts, process CPU time at
        # the start of its plan), None if none
        self._pending: tuple[int, int, int, int, float] | None = None
        self._plan_started_cpu_s = 0.0

    @property
    def fitted(self) -> dict[int, DraftCosts]:
        """The fitted classes, by their smallest batch size."""
        return {1 << (key - 1): size.fitted for key, size in sorted(self._classes.items()) if size.fitted is not None}

    def costs(self, num_decodes: int, num_kv_tokens_read: int = 0) -> DraftCosts:
        """The terms fitted for this batch size's class (or the nearest fitted class), or before any fit the
        step-cost fit's, with the decodes' KV read in the base."""
        key = max(num_decodes, 1).bit_length()
        fitted = [(abs(other - key), other) for other, size in self._classes.items() if size.fitted is not None]
        if fitted:
            return self._classes[min(fitted)[1]].fitted  # type: ignore[return-value]
        fit = self._cost_model.coefficients
        base_s = fit.base_s + fit.per_kv_token_s * num_kv_tokens_read
        return DraftCosts(base_s, fit.per_token_s, 0.0, fit.per_token_s)

    def planned(self, num_decodes: int, num_verifies: int, num_drafts: int) -> None:
        """What the coming step will feed if scheduled as planned (called before the step runs)."""
        started_s = self._plan_started_cpu_s
        self._pending = (self._cost_model.num_observed, num_decodes, num_verifies, num_drafts, started_s)

    def settle(self) -> None:
        """Called at the start of each plan: pairs the step planned last with its measured time, if it ran as
        planned (exactly one step observed since, feeding the decodes and drafts only: no prefill chunk, no
        draft cut), and starts the CPU clock of the coming one."""
        if self.config.clock is StepClock.PROCESS_CPU:
            self._plan_started_cpu_s = time.process_time()
        pending, self._pending = self._pending, None
        cost_model = self._cost_model
        observed = cost_model.last_observed
        if pending is None or observed is None or cost_model.num_observed != pending[0] + 1:
            return
        _, num_decodes, num_verifies, num_drafts, started_cpu_s = pending
        if observed[0] != num_decodes + num_drafts:
            return
        cpu = self.config.clock is StepClock.PROCESS_CPU
        step_s = cost_model.last_observed_cpu_s - started_cpu_s if cpu else observed[2]
        self.record(num_decodes, num_verifies, num_drafts, step_s)

    def record(self, num_decodes: int, num_verifies: int, num_drafts: int, step_s: float) -> None:
        """One decode-only step: num_decodes requests fed, num_verifies of them with num_drafts drafts in all."""
        if step_s <= 0 or num_decodes <= 0:
            return
        key = num_decodes.bit_length()
        size = self._classes.get(key)
        if size is None:
            size = self._classes[key] = _SizeClass(collections.deque(maxlen=self.config.window_steps))
        size.steps.append((num_decodes, num_verifies, num_drafts, step_s))
        size.since_refit += 1
        if size.since_refit >= self.config.refit_every_steps and len(size.steps) >= self.config.min_steps_to_fit:
            size.since_refit = 0
            per_token_s = self._cost_model.coefficients.per_token_s
            size.fitted = _fit(size.steps, per_token_s, self.config.fit_per_verify) or size.fitted


@dataclass
class _SizeClass:
    """One batch-size class's recent decode-only steps (decodes, verifies, drafts, seconds) and its fit."""

    steps: collections.deque[tuple[int, int, int, float]]
    since_refit: int = 0
    fitted: DraftCosts | None = None


def _fit(
    steps: collections.deque[tuple[int, int, int, float]], per_token_s: float, fit_per_verify: bool
) -> DraftCosts | None:
    """Non-negative least squares of the steps' seconds on [1, decodes, verifies, drafts] (verifies only with
    fit_per_verify, else their term is 0); None without steps both with and without drafts, or when a plain
    step or drafting would cost nothing."""
    data = np.asarray(steps, dtype=np.float64)
    if not (np.any(data[:, 1] == 0) and np.any(data[:, 1] > 0)):
        return None  # steps with and without drafts both needed to tell a verify from a decode
    full = np.column_stack([np.ones(len(data)), data[:, :3]])
    columns = [0]
    for column in (1, 2, 3) if fit_per_verify else (1, 3):  # a column adds a term only where it varies apart
        if np.linalg.matrix_rank(full[:, columns + [column]]) == len(columns) + 1:
            columns.append(column)
    solution = nonnegative_least_squares(full[:, columns], data[:, 3])
    if solution is None:
        return None
    terms = np.zeros(4)
    terms[columns] = solution
    if 1 not in columns:  # one batch size: its plain step is known, not how it scales;
        # the step-cost fit's per-token slope splits it (a batch that shrinks then values a token more)
        num_decodes = data[0, 0]
        terms[1] = min(per_token_s, terms[0] / num_decodes)
        terms[0] -= terms[1] * num_decodes
    fitted = DraftCosts(*(float(term) for term in terms))
    if fitted.per_draft_s <= 0.0 and fitted.per_verify_s <= 0.0:
        # A draft goes through every layer and the LM head: a fit that prices drafting at nothing has not told
        # it from the steps' noise (batch 16 on CPU, one batch size, +-15% per step: base 128.5 ms, 0 per draft,
        # and every proposal looked free); the class keeps its previous fit, or borrows the nearest one's.
        return None
    return fitted if fitted.plain_step_s(int(data[-1, 0])) > 0.0 else None


def num_drafts_worth(
    costs: DraftCosts,
    num_decodes: int,
    first_rate: float | np.ndarray,
    continuation_rate: float | np.ndarray,
    max_drafts: int,
) -> np.ndarray:
    """Per request (rates: one pair, or one per request), the k in [0, max_drafts] that maximises its decode's
    expected output tokens per second in this batch (the smallest k on ties; two-rate acceptance model,
    adaptive_drafting.py):

        k* = argmax_k (1 + accepted(k)) / (plain_step_s(n) / n + verify_s(k))
    """
    first, later = np.broadcast_arrays(np.atleast_1d(first_rate), np.atleast_1d(continuation_rate))
    if num_decodes <= 0 or max_drafts <= 0:
        return np.zeros(len(first), dtype=np.int64)
    tokens = 1.0 + _expected_accepted(first, later, max_drafts)  # [requests, max_drafts + 1]
    return np.argmax(tokens / _decode_s(costs, num_decodes, max_drafts), axis=1)


def share_s(costs: DraftCosts, num_decodes: int) -> float:
    """One decode's share of a plain step of this batch, seconds."""
    return costs.plain_step_s(num_decodes) / max(num_decodes, 1)


def token_value_s(costs: DraftCosts, num_decodes: int, drafting_fraction: float) -> float:
    """What one accepted draft saves, seconds: its request one decode later on (per_decode_s), and the step's
    fixed cost (base_s / n per token) only as far as the whole batch speeds up, here the fraction of its
    decodes that proposed drafts. A batch holds its steps until its slowest request is done: where a few
    requests draft, they finish early and the rest decode on at a smaller, less efficient batch, so the
    base is not saved; where all draft alike, the batch's steps fall and it is. At batch 1 (fraction 1)
    it is the whole step, as before. A server whose freed slots are refilled at once gains the full share
    (DraftCostConfig.closed_batch_value False)."""
    fraction = min(max(drafting_fraction, 0.0), 1.0)
    return costs.per_decode_s + fraction * costs.base_s / max(num_decodes, 1)


def critical_token_value_s(costs: DraftCosts, critical: bool, num_critical: int, num_critical_drafting: int) -> float:
    """What one accepted draft saves in a closed batch, by whether its request is on the critical path: among
    the num_critical running requests (decoding or still prefilling) with the most output left, of which
    num_critical_drafting proposed drafts. The batch's steps last until its last request is done, so they
    fall by one only when every critical request gains a token: while each of them drafts, a critical token
    saves base_s / num_critical besides its own later decode; where one of them does not (no match, paused,
    still prefilling), it holds the batch, and like a token of a request ahead of the critical ones a token
    saves only that decode (its request finishes sooner and later steps are smaller by one). Measured at
    batch 16 (spec_step_profile.py, 512-token budget): n-gram emitted 287 of 768 summarise tokens while the
    last prompts prefilled, yet the batch took as many steps as off's, held by the request prefilled last;
    with all prompts prefilled in one step, valuing critical tokens as far as the critical requests drafted
    (base_s x drafting / critical^2) drafted 178 code-edit tokens and saved no step (0.93x of off).
    With every request critical and drafting it is token_value_s's value for a whole batch that drafts."""
    if not critical or num_critical <= 0 or num_critical_drafting < num_critical:
        return costs.per_decode_s
    return costs.per_decode_s + costs.base_s / num_critical


def expected_savings_s(
    costs: DraftCosts, first_rate: float, continuation_rate: float, max_drafts: int, s_per_token: float
) -> np.ndarray:
    """[max_drafts + 1] seconds m drafts of one request are expected to save, accepted(m) x s_per_token -
    verify_s(m) (m = 0: 0); s_per_token is what an accepted token saves (token_value_s)."""
    cost_s = costs.per_verify_s + costs.per_draft_s * np.arange(max_drafts + 1)
    cost_s[0] = 0.0
    accepted = _expected_accepted(np.atleast_1d(first_rate), np.atleast_1d(continuation_rate), max_drafts)[0]
    return accepted * s_per_token - cost_s


def _expected_accepted(first_rate: np.ndarray, continuation_rate: np.ndarray, max_drafts: int) -> np.ndarray:
    """[requests, max_drafts + 1] expected accepted drafts of a verify of m drafts: a1 (1 + c + ... + c^(m-1))."""
    first, later = np.clip(first_rate, 0.0, 1.0)[:, None], np.clip(continuation_rate, 0.0, 1.0)[:, None]
    reached = first * later ** np.arange(max_drafts)[None, :]  # P(draft i + 1 accepted)
    return np.concatenate([np.zeros((len(reached), 1)), np.cumsum(reached, axis=1)], axis=1)


def _decode_s(costs: DraftCosts, num_decodes: int, max_drafts: int) -> np.ndarray:
    """[max_drafts + 1] seconds one decode of the batch takes with m drafts: its share of a plain step + verify_s(m)."""
    verify_s = costs.per_verify_s + costs.per_draft_s * np.arange(max_drafts + 1)
    verify_s[0] = 0.0
    return np.maximum(share_s(costs, num_decodes) + verify_s, 1e-12)
