"""Where a prompt-lookup drafter loses against the oracle of spec_bound_sim.py, per step and in speedup.

A drafter replayed on off's greedy output (spec_bound_sim.drafter_tally) accepts a drafts at output
position t; the oracle's R_t is the longest run any earlier occurrence of the last token would have
drafted (n >= 1, k <= 16, copies through the drafts allowed). Each step of the replay falls in one
category (StepLoss):

    NOTHING_TO_DRAFT   no drafts and R_t = 0                   (nothing lost)
    BEST_RUN           a = R_t                                 (drafts past a are wasted verify work)
    NO_DRAFT           no drafts, R_t > 0                      (only a unigram, or an unvoted one, hit)
    CUT_AT_K           a = every draft, the copied occurrence went on agreeing   (k too short)
    WRONG_OCCURRENCE   a < R_t, the copied occurrence stopped agreeing first     (another went further)

What each costs in speedup: the same drafter replayed with one piece of oracle knowledge at a time
(OracleFix), on the measured verify costs; "all" is close to the oracle, which also schedules optimally.

    BEST_OCCURRENCE    copy from the occurrence of the same matched suffix whose continuation agrees longest
    EXACT_LENGTH       draft exactly as many tokens as the copied continuation agrees (no waste, no cut)
    ORACLE_UNIGRAM     where it drafts nothing, draft R_t tokens from the best earlier occurrence
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from services.bench.spec_bound_sim import CostScale, Tally, drafter_tally, oracle_run_lengths
from services.engine.spec.ngram_drafter import NgramConfig, copy_continuation, matched_length

ORACLE_CAP = 16  # MAX_NUM_SPECULATIVE_TOKENS


class StepLoss(StrEnum):
    NOTHING_TO_DRAFT = "nothing to draft"
    BEST_RUN = "accepted the best run"
    NO_DRAFT = "no draft, an earlier occurrence would have hit"
    CUT_AT_K = "cut at k, the copy went on"
    WRONG_OCCURRENCE = "wrong occurrence copied"


class OracleFix(StrEnum):
    BEST_OCCURRENCE = "best occurrence"
    EXACT_LENGTH = "exact length"
    ORACLE_UNIGRAM = "oracle unigram"


def agreeing_run(tokens: np.ndarray, context_len: int, end: int, copy_past_end: bool, cap: int = ORACLE_CAP) -> int:
    """How many of the tokens after context_len the continuation of position `end` predicts (at most cap)."""
    run = 0
    while run < cap and context_len + run < len(tokens) and tokens[end + 1 + run] == tokens[context_len + run]:
        if not copy_past_end and end + 1 + run >= context_len:
            break
        run += 1
    return run


def _occurrences(context: np.ndarray, n: int) -> np.ndarray:
    """Ends (<= len - 2) of the earlier occurrences of the context's last n tokens."""
    length = len(context)
    ends = np.flatnonzero(context[: length - 1] == context[-1])
    for back in range(1, n):
        ends = ends[ends >= back]
        ends = ends[context[ends - back] == context[length - 1 - back]]
    return ends


def assisted_drafter(tokens: np.ndarray, config: NgramConfig, num_drafts: int, fixes: frozenset[OracleFix]):
    """The config's drafter on this prompt + output, with the given oracle fixes (a spec_bound_sim Drafter)."""

    def best(context: np.ndarray, ends: np.ndarray) -> tuple[int, int]:
        runs = [agreeing_run(tokens, len(context), int(end), config.copy_past_end) for end in ends]
        index = max(range(len(ends)), key=lambda i: (runs[i], ends[i]))  # ties: the latest
        return int(ends[index]), runs[index]

    def draft(context: np.ndarray, last: tuple[int, int]) -> list[int]:
        end, length = config.source(context, num_drafts)
        if end < 0:
            if OracleFix.ORACLE_UNIGRAM not in fixes or not len(ends := _occurrences(context, 1)):
                return []
            end, length = best(context, ends)
            return copy_continuation(context, end, length, config.copy_past_end)
        if OracleFix.BEST_OCCURRENCE in fixes:
            n = min(matched_length(context, end), config.max_n)
            end, _ = best(context, _occurrences(context, n))
        if OracleFix.EXACT_LENGTH in fixes:
            length = agreeing_run(tokens, len(context), end, config.copy_past_end)
        return copy_continuation(context, end, length, config.copy_past_end)

    return draft


def step_losses(tokens: np.ndarray, prompt_len: int, config: NgramConfig, num_drafts: int) -> dict[StepLoss, list[int]]:
    """{category: [steps, tokens short of R_t, wasted drafts]} over the replay of positions 1..T-1."""
    runs = oracle_run_lengths(tokens, prompt_len, 1, ORACLE_CAP)
    num_outputs = len(tokens) - prompt_len
    found: dict[StepLoss, list[int]] = {loss: [0, 0, 0] for loss in StepLoss}
    t = 1
    while t < num_outputs:
        context_len = prompt_len + t
        context = tokens[:context_len]
        end, length = config.source(context, min(num_drafts, num_outputs - 1 - t))
        drafts = copy_continuation(context, end, length, config.copy_past_end) if end >= 0 else []
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == tokens[context_len + accepted]:
            accepted += 1
        best_run = min(int(runs[t]), num_outputs - 1 - t)
        if not drafts:
            loss = StepLoss.NOTHING_TO_DRAFT if best_run == 0 else StepLoss.NO_DRAFT
        elif accepted >= best_run:
            loss = StepLoss.BEST_RUN
        elif accepted == len(drafts) and agreeing_run(tokens, context_len, end, config.copy_past_end) > accepted:
            loss = StepLoss.CUT_AT_K
        else:
            loss = StepLoss.WRONG_OCCURRENCE
        row = found[loss]
        row[0] += 1
        row[1] += max(best_run - accepted, 0)
        row[2] += len(drafts) - accepted
        t += accepted + 1
    return found


FIX_SETS = {
    "as is": frozenset(),
    **{f"+ {fix.value}": frozenset({fix}) for fix in OracleFix},
    "+ all three": frozenset(OracleFix),
}


def loss_report(rows: list[tuple], drafters: dict[str, tuple[NgramConfig, int]], scale: CostScale) -> dict:
    """{drafter: {"steps": {category: {...}}, "speedup": {fix set: x}}} over rows = [(id, prompt, output, ...)]."""
    report = {}
    for label, (config, num_drafts) in drafters.items():
        totals = {loss: [0, 0, 0] for loss in StepLoss}
        tallies = {name: Tally() for name in FIX_SETS}
        for _, prompt, output, *_ in rows:
            tokens = np.array(list(prompt) + list(output), dtype=np.int64)
            for loss, values in step_losses(tokens, len(prompt), config, num_drafts).items():
                totals[loss] = [a + b for a, b in zip(totals[loss], values)]
            for name, fixes in FIX_SETS.items():
                drafter = assisted_drafter(tokens, config, num_drafts, fixes)
                tallies[name].add(drafter_tally(tokens, len(prompt), drafter, scale))
        report[label] = {
            "steps": {
                loss.value: {"steps": s, "tokens_short_of_best_run": short, "wasted_drafts": wasted}
                for loss, (s, short, wasted) in totals.items()
            },
            "speedup": {name: tally.figures()["speedup"] for name, tally in tallies.items()},
        }
    return report
