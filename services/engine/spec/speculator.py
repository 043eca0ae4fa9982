"""The engine side of speculative decoding: who drafts how many tokens each step, and what came of it.

Before each step (EngineCore.step), plan() gives every running request that decodes a number of draft
slots (Request.num_draft_slots) and, for n-gram drafting, the drafts themselves; the scheduler grants
slots within the step's token budget and free KV (Scheduler._grant_drafts), the model runner makes
early-exit drafts inside the step and verifies all of them, and observe() records what was accepted.

How many drafts, per step:
    batch level:   every decode's k in [0, k_max] maximises its expected output tokens per second in
                   this batch: its share of a plain step yields one token, a verify of k drafts adds the
                   verify's measured cost (draft_cost.py: a meter fitted on the engine's own decode
                   steps, with and without drafts, per batch-size class) and yields the accepted drafts
                   (two-rate acceptance, the request's own estimate shrunk toward the batch's;
                   adaptive_drafting.py); the decodes with k > 0 propose, and each proposal is cut to
                   the length that saves most at what an accepted token is worth in this batch (a
                   later decode of its request, plus the step's fixed cost only for the requests with
                   the most output left, and only while all of them draft: a batch's steps last until
                   its last request is done), or dropped; a compute-bound step (large batch) makes a token worth
                   little and a verify dear, so drafting stops there except for long, likely copies;
                   after probe_every_steps steps without drafts one proposal is verified anyway (costs
                   and acceptance re-measured: a batch that stopped can start again);
    request level: AcceptanceTracker stops a request whose drafts keep failing, for a backoff that
                   doubles, then probes it again; verifies of n-gram unigram-fallback drafts are not
                   judged (1-2 tokens, accepted ~35% of the time, they pulled a request's estimate
                   below the bar and paused its long copies too: replayed under these rules on
                   SmolLM2's outputs, 4 summarise prompts, 1.40x judged vs 1.43x not; spec_bound.json);
    limits:        never past max_tokens (a verify emits up to k + 1 tokens) or the model context, and
                   not while min_tokens masking is active (verification does not mask stop tokens),
                   nor for a request that opted out (SamplingOptions.speculative).
"""

from __future__ import annotations

import numpy as np

from services.engine.request import Request
from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.scheduler.output import SchedulerOutput
from services.engine.spec.adaptive_drafting import AcceptanceTracker, AdaptiveDraftingConfig, batch_num_drafts
from services.engine.spec.draft_cost import (
    DraftCostConfig,
    DraftCostMeter,
    DraftCosts,
    critical_token_value_s,
    expected_savings_s,
    num_drafts_worth,
    token_value_s,
)
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.spec_config import SpeculativeConfig
from services.engine.spec.spec_stats import SpecStats


class Speculator:
    """Plans drafts before each step and tracks acceptance; engine thread only."""

    def __init__(
        self,
        config: SpeculativeConfig,
        cost_model: OnlineStepCostModel,
        max_model_len: int,
        adaptive: AdaptiveDraftingConfig | None = None,
        draft_costs: DraftCostConfig | None = None,
    ) -> None:
        if not config.enabled:
            raise ValueError("a Speculator needs a speculative method other than off")
        self.config = config
        self.cost_model = cost_model
        self.max_model_len = max_model_len
        self.tracker = AcceptanceTracker(adaptive)
        self.two_rate_model = (adaptive or AdaptiveDraftingConfig()).two_rate_model
        self.stats = SpecStats()
        self.meter = DraftCostMeter(cost_model, draft_costs)
        self._unjudged: set[str] = set()  # requests whose drafts this step are the unigram fallback's
        self._steps_turned_down = 0  # steps in a row in which no request drafted (the probe's count)
        self._critical: set[str] = set()  # this step's critical path (_critical_path), request ids

    def plan(self, running: list[Request]) -> None:
        """Sets num_draft_slots (and n-gram drafts) on every running request for the coming step."""
        self.meter.settle()  # the step planned last, now measured
        decodes, num_decodes = [], 0
        self._unjudged.clear()
        for request in running:
            request.num_draft_slots, request.draft_token_ids = 0, None
            if request.num_tokens - request.num_computed_tokens == 1:
                num_decodes += 1
                if self._may_draft(request):
                    decodes.append(request)
        self._critical = _critical_path(running) if decodes else set()
        drafting = self._plan_drafts(decodes, num_decodes) if decodes else []
        self.meter.planned(num_decodes, len(drafting), sum(request.num_draft_slots for request in drafting))

    def _plan_drafts(self, decodes: list[Request], num_decodes: int) -> list[Request]:
        """Drafts for the decodes that may draft, where they are expected to save time; the requests that got some.

        First every decode with k > 0 proposes (k from its tokens per second at a decode's full share);
        then each proposal is cut to the length that saves most at the value of an accepted token given the
        share of the batch that proposed (token_value_s), and dropped where none saves."""
        first, later, worth, costs = self._drafts_worth(decodes, num_decodes)
        measured = self.meter.config.measured
        probe = measured and not worth.any() and self._steps_turned_down + 1 >= self.meter.config.probe_every_steps
        if not (worth.any() or probe):
            self._steps_turned_down += 1
            return []
        max_drafts = self.config.num_speculative_tokens
        proposing = []
        for index, request in enumerate(decodes):
            limit = min(
                max_drafts if probe else int(worth[index]),
                request.sampling.max_tokens - request.num_output_tokens - 1,
                self.max_model_len - request.num_tokens,
            )
            num_drafts = self.tracker.num_drafts(request.request_id, limit) if limit > 0 else 0
            if num_drafts > 0 and self._propose(request, num_drafts):
                proposing.append(index)
                if probe:  # one proposal re-measures; the others stay turned down
                    break
        if measured and not probe:  # a probe, or the turn-down before the meter, keeps every proposal
            values_s = self._token_values_s([decodes[index] for index in proposing], costs, num_decodes)
            proposing = [
                index
                for index, value_s in zip(proposing, values_s)
                if self._cut(decodes[index], costs, first[index], later[index], value_s)
            ]
        drafting = [decodes[index] for index in proposing]
        self._steps_turned_down = 0 if drafting else self._steps_turned_down + 1
        return drafting

    def _token_values_s(self, proposing: list[Request], costs: DraftCosts, num_decodes: int) -> list[float]:
        """What an accepted draft of each proposing request saves (draft_cost.py: critical_token_value_s, or
        token_value_s without the critical path)."""
        config = self.meter.config
        if not config.closed_batch_value:
            return [token_value_s(costs, num_decodes, 1.0)] * len(proposing)
        if not config.critical_path:
            return [token_value_s(costs, num_decodes, len(proposing) / num_decodes)] * len(proposing)
        critical = self._critical
        num_drafting = sum(request.request_id in critical for request in proposing)
        return [critical_token_value_s(costs, r.request_id in critical, len(critical), num_drafting) for r in proposing]

    def _cut(self, request: Request, costs: DraftCosts, first: float, later: float, value_s: float) -> bool:
        """Cuts the request's proposal to the length that saves most (none: cleared); whether any is left."""
        savings_s = expected_savings_s(costs, first, later, request.num_draft_slots, value_s)
        keep = int(np.argmax(savings_s))
        if keep == 0:
            request.num_draft_slots, request.draft_token_ids = 0, None
            self._unjudged.discard(request.request_id)
            return False
        request.num_draft_slots = keep
        if request.draft_token_ids is not None:
            request.draft_token_ids = request.draft_token_ids[:keep]
        return True

    def _drafts_worth(
        self, decodes: list[Request], num_decodes: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, DraftCosts]:
        """Per decode that may draft: a1, c and the k worth drafting; and the costs they were judged by."""
        if self.two_rate_model:
            pooled = self.tracker.batch_acceptance_model()
            first, later = self.tracker.request_acceptance_models([request.request_id for request in decodes], pooled)
        else:  # the "@prev" rules: one pooled rate for every request
            pooled = (self.tracker.batch_acceptance_rate(),) * 2
            first = later = np.full(len(decodes), pooled[0])
        # The decodes' KV read is part of the step-cost fit the meter reads before its own fit: on CPU that
        # fit can put a step's fixed cost there (base_s ~ 0), and without it a draft looked as dear as a step.
        num_kv_tokens_read = sum(request.num_tokens for request in decodes)
        max_drafts = self.config.num_speculative_tokens
        costs = self.meter.costs(num_decodes, num_kv_tokens_read)
        if self.meter.config.measured:
            return first, later, num_drafts_worth(costs, num_decodes, first, later, max_drafts), costs
        # the turn-down before the meter (`alise bench spec`'s "@fit"): one k for the batch on the step-cost fit
        k = batch_num_drafts(len(decodes), pooled[0], max_drafts, self.cost_model.coefficients,
                             num_kv_tokens_read=num_kv_tokens_read, continuation_rate=pooled[1])  # fmt: skip
        return first, later, np.full(len(decodes), k), costs

    def _may_draft(self, request: Request) -> bool:
        sampling = request.sampling
        return sampling.speculative and request.num_output_tokens >= sampling.min_tokens

    def _propose(self, request: Request, num_drafts: int) -> bool:
        """Sets up to num_drafts drafts (or early-exit draft slots) on the request; whether it got any."""
        if self.config.method is SpeculativeMethod.EARLY_EXIT:  # the runner drafts in the step
            request.num_draft_slots = num_drafts
            return True
        tokens = np.array(request.prompt_token_ids + request.output_token_ids, dtype=np.int64)
        drafts, matched = self.config.ngram.propose_with_source(tokens, num_drafts)
        if not drafts:
            return False
        request.num_draft_slots, request.draft_token_ids = len(drafts), drafts
        if not matched:
            self._unjudged.add(request.request_id)
        return True

    def observe(self, output: SchedulerOutput, verified: dict[str, list[int]]) -> None:
        """Records each verify's outcome (called after Scheduler.update)."""
        num_drafted = num_accepted = num_verifies = 0
        for chunk in output.chunks:
            if not chunk.num_draft_tokens:
                continue
            appended = verified.get(chunk.request.request_id)
            if appended is None:  # aborted while the step ran
                continue
            accepted = len(appended) - 1
            if chunk.request.request_id not in self._unjudged:
                self.tracker.record(chunk.request.request_id, chunk.num_draft_tokens, accepted)
            num_drafted += chunk.num_draft_tokens
            num_accepted += accepted
            num_verifies += 1
        if num_verifies:
            self.stats.record_step(num_drafted, num_accepted, num_verifies)

    def forget(self, request_id: str) -> None:
        self.tracker.forget(request_id)


def _critical_path(running: list[Request]) -> set[str]:
    """The running requests with the most output left (ties within half a token): the batch's critical path.

    Output left: at most max_tokens - output, and sooner the predicted length's expected remainder, unless
    EOS is ignored (exact for a closed benchmark group whose prediction is max_tokens; with uncertain
    predictions requests look alike and more of them share the path); plus one while still prefilling (a
    step before its first token)."""
    left = {}
    for request in running:
        num_output = request.num_output_tokens
        remaining = float(request.sampling.max_tokens - num_output)
        if not request.sampling.ignore_eos and request.length_distribution is not None:
            remaining = min(remaining, request.length_distribution.expected_remaining_tokens(num_output))
        prefilling = request.num_tokens - request.num_computed_tokens > 1 or not num_output
        left[request.request_id] = remaining + (1.0 if prefilling else 0.0)
    most = max(left.values(), default=0.0)
    return {request_id for request_id, remaining in left.items() if remaining >= most - 0.5}
