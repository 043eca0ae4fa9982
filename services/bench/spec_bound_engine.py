"""A drafter replayed under the engine's own batch-1 rules (speculator.py), for spec_bound.py.

spec_bound_sim replays a drafter as if every draft it proposes were verified. The engine also decides
how many drafts a request may propose (batch_num_drafts under its step-cost model, with the batch's
acceptance estimate) and pauses a request whose drafts keep failing (AcceptanceTracker). This wraps a
drafter in those same classes, at batch 1, so a replay shows what the rules cost on the same outputs:

    each call:  record the previous verify (accepted = tokens added since - 1), unless it was unjudged
                k = batch_num_drafts(1, estimate, max_drafts, coefficients)  ->  tracker.num_drafts(k)
                drafts = config.propose_with_source(context, that many)

The step-cost coefficients are the measured ones (decode = base, verify slope = per fed token), not the
engine's online fit; a verify cut short by the end of the output is recorded at its proposed length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.bench.spec_bound_sim import Drafter
from services.engine.scheduler.cost_model import StepCostCoefficients
from services.engine.spec.adaptive_drafting import AcceptanceTracker, AdaptiveDraftingConfig, batch_num_drafts
from services.engine.spec.ngram_drafter import NgramConfig

REQUEST_ID = "replayed"
# (context, how many drafts at most) -> (drafts, whether they come from an n-gram match): NgramConfig's
# propose_with_source, or a variant's (spec_bound_variants.py); called every step, with 0 while not drafting
Proposer = Callable[[np.ndarray, int], tuple[list[int], bool]]


@dataclass(frozen=True)
class EngineRules:
    """The speculator's settings a replay runs under."""

    ngram: NgramConfig
    max_drafts: int  # --num-speculative-tokens
    adaptive: AdaptiveDraftingConfig
    judge_fallback: bool  # False = the speculator's rule (unigram-fallback verifies are not judged)


def coefficients_from_costs(decode_ms: float, verify_ms_by_num_drafts: dict[int, float]) -> StepCostCoefficients:
    """A batch-1 step: base = the decode, per fed token = the verify's mean slope up to the largest k."""
    largest = max(verify_ms_by_num_drafts)
    slope_ms = max(verify_ms_by_num_drafts[largest] - decode_ms, 0.0) / largest
    return StepCostCoefficients(base_s=decode_ms / 1e3, per_token_s=slope_ms / 1e3, per_kv_token_s=0.0)


def engine_drafter(rules: EngineRules, coefficients: StepCostCoefficients, propose: Proposer | None = None) -> Drafter:
    """A fresh stateful drafter for one replay (one prompt, one cost scale); propose: the drafter itself
    (default: rules.ngram.propose_with_source), told of every step, with 0 drafts while not drafting."""
    tracker = AcceptanceTracker(rules.adaptive)
    propose = propose or rules.ngram.propose_with_source
    pending: list[tuple[int, int, bool]] = []  # (context length, drafts proposed, judged) of the last verify

    def draft(context: np.ndarray, last: tuple[int, int]) -> list[int]:
        if pending:
            length, num_drafted, judged = pending.pop()
            if judged:
                tracker.record(REQUEST_ID, num_drafted, min(len(context) - length - 1, num_drafted))
        if rules.adaptive.two_rate_model:
            first_rate, continuation_rate = tracker.batch_acceptance_model()
        else:
            first_rate, continuation_rate = tracker.batch_acceptance_rate(), None
        k = batch_num_drafts(
            1, first_rate, rules.max_drafts, coefficients, num_kv_tokens_read=len(context),
            continuation_rate=continuation_rate,
        )  # fmt: skip
        num_drafts = tracker.num_drafts(REQUEST_ID, k) if k > 0 else 0
        drafts, matched = propose(context, num_drafts)
        if drafts:
            pending.append((len(context), len(drafts), matched or rules.judge_fallback))
        return drafts

    return draft


def engine_drafters(coefficients: StepCostCoefficients) -> dict[str, Callable[[], Drafter]]:
    """The default and the previous rules under the engine's batch-1 k and pauses (factories: one per replay)."""
    current, previous = NgramConfig(), NgramConfig(copy_past_end=False, num_unigram_drafts=0)
    one_rate = AdaptiveDraftingConfig(two_rate_model=False)
    rules = {
        "engine rules: default (k 16)": EngineRules(current, 16, AdaptiveDraftingConfig(), False),
        "engine rules: default, fallback verifies judged": EngineRules(current, 16, AdaptiveDraftingConfig(), True),
        "engine rules: default, one-rate k": EngineRules(current, 16, one_rate, False),
        "engine rules: previous default (k 4)": EngineRules(previous, 4, one_rate, True),
        "engine rules: previous rules, k 16": EngineRules(previous, 16, one_rate, True),
    }
    return {label: (lambda r=r: engine_drafter(r, coefficients)) for label, r in rules.items()}
