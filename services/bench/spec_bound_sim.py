"""Replays drafters on fixed greedy outputs: what prompt lookup could gain, from tokens and step costs alone.

Greedy speculation is exact, so a drafter's fate on a request is decided by the off output alone: a
verify at output position t with drafts d accepts the longest prefix of d equal to out[t:], then the
target's own token follows. Replaying that needs no model, only the verify costs:

    cost(k) = a step verifying k drafts, in decode steps (cost(0) = 1; measured, spec_bound.py)
    speedup = decode tokens / sum of the step costs spent emitting them     (off: 1 step per token)

Decode = output positions 1 .. T-1 (position 0 comes from the prefill step, as in `alise bench spec`).

The oracle: R_t = the longest run of out[t:] that any earlier occurrence of the last token (n >= 1;
or of the last min_n tokens) would have drafted, at most cap tokens, copying from the tokens already
there (prompt + out[:t]) and on through its own drafts (an occurrence near the end copies what it has
just drafted, as ngram_drafter's copy_past_end does; accepted drafts equal out, so the run reads out). Knowing every R_t, the cheapest schedule is a shortest path:

    C(T) = 0,   C(t) = min over k in 0..min(R_t, cap, T-1-t) of cost(k) + C(t + k + 1)

so T-1 / C(1) bounds every prompt-lookup drafter that drafts from the request's own tokens, whatever
its choice of occurrence, n or k (a drafter can only lose by drafting what is rejected).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from services.engine.spec.ngram_drafter import NgramConfig, propose_ngram_drafts

Drafter = Callable[[np.ndarray, tuple[int, int]], list[int]]  # (context, (last drafted, last accepted)) -> drafts


@dataclass(frozen=True)
class CostScale:
    """ratios[k]: a step verifying k drafts, in decode steps (ratios[0] == 1)."""

    ratios: tuple[float, ...]

    @classmethod
    def of(cls, ratios: Sequence[float]) -> CostScale:
        if not len(ratios) or abs(ratios[0] - 1.0) > 1e-9 or min(ratios) <= 0:
            raise ValueError(f"cost ratios must start at 1 and be positive, got {list(ratios)[:3]}...")
        return cls(tuple(float(r) for r in ratios))

    @property
    def max_drafts(self) -> int:
        return len(self.ratios) - 1


@dataclass
class Tally:
    """One drafter's replay over some outputs, on one cost scale."""

    num_tokens: int = 0  # decode tokens emitted
    num_steps: int = 0  # steps (decodes and verifies)
    num_verifies: int = 0  # steps with at least one draft
    num_drafted: int = 0
    num_accepted: int = 0
    cost: float = 0.0  # in decode steps

    def add(self, other: Tally) -> None:
        for name in ("num_tokens", "num_steps", "num_verifies", "num_drafted", "num_accepted", "cost"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def figures(self) -> dict:
        return {
            "speedup": self.num_tokens / self.cost if self.cost else 1.0,
            "tokens_per_step": self.num_tokens / max(self.num_steps, 1),
            "tokens_per_verify": 1 + self.num_accepted / self.num_verifies if self.num_verifies else 0.0,
            "drafts_per_step": self.num_drafted / max(self.num_steps, 1),
            "verifies_per_step": self.num_verifies / max(self.num_steps, 1),
            "acceptance_rate": self.num_accepted / self.num_drafted if self.num_drafted else 0.0,
            "num_tokens": self.num_tokens,
        }


def oracle_run_lengths(tokens: np.ndarray, prompt_len: int, min_n: int, cap: int) -> np.ndarray:
    """R_t for t in [0, T): see the module docstring. tokens = prompt + the off output."""
    tokens = np.asarray(tokens, dtype=np.int64)
    total = len(tokens)
    runs = np.zeros(total - prompt_len, dtype=np.int64)
    for t in range(total - prompt_len):
        context_len = prompt_len + t
        ends = np.flatnonzero(tokens[: context_len - 1] == tokens[context_len - 1])
        for back in range(1, min_n):  # keep ends whose window of min_n tokens matches the suffix
            ends = ends[ends >= back]
            ends = ends[tokens[ends - back] == tokens[context_len - 1 - back]]
        alive = ends
        for i in range(min(cap, total - context_len)):
            alive = alive[tokens[alive + 1 + i] == tokens[context_len + i]]
            if not len(alive):
                break
            runs[t] = i + 1
    return runs


def oracle_tally(runs: np.ndarray, scale: CostScale) -> Tally:
    """The cheapest schedule over positions 1..T-1 given every R_t (shortest path, back to front)."""
    num_outputs = len(runs)
    # Accepting a drafts costs at least the cheapest verify of >= a drafts (measured costs need not rise
    # with k: noise), so the bound holds against a drafter that drafts more than is accepted.
    cheapest = np.minimum.accumulate(np.array(scale.ratios)[::-1])[::-1]
    drafted = [a + int(np.argmin(scale.ratios[a:])) for a in range(len(scale.ratios))]
    best = np.zeros(num_outputs + 1)
    choice = np.zeros(num_outputs + 1, dtype=np.int64)
    for t in range(num_outputs - 1, 0, -1):
        options = [
            cheapest[a] + best[t + a + 1] for a in range(min(runs[t], scale.max_drafts, num_outputs - 1 - t) + 1)
        ]
        choice[t] = int(np.argmin(options))
        best[t] = options[choice[t]]
    tally, t = Tally(), 1
    while t < num_outputs:
        accepted = int(choice[t])
        num_drafts = drafted[accepted]
        tally.add(Tally(accepted + 1, 1, int(num_drafts > 0), num_drafts, accepted, float(cheapest[accepted])))
        t += accepted + 1
    return tally


def drafter_tally(tokens: np.ndarray, prompt_len: int, drafter: Drafter, scale: CostScale) -> Tally:
    """Replays a real drafter over positions 1..T-1: each step drafts from the tokens so far."""
    tokens = np.asarray(tokens, dtype=np.int64)
    num_outputs = len(tokens) - prompt_len
    tally, t, last = Tally(), 1, (0, 0)
    while t < num_outputs:
        context_len = prompt_len + t
        drafts = drafter(tokens[:context_len], last)[: min(scale.max_drafts, num_outputs - 1 - t)]
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == tokens[context_len + accepted]:
            accepted += 1
        tally.add(Tally(accepted + 1, 1, int(bool(drafts)), len(drafts), accepted, scale.ratios[len(drafts)]))
        last = (len(drafts), accepted) if drafts else last
        t += accepted + 1
    return tally


def ngram(min_n: int, max_n: int, num_drafts: int, drafts_per_matched_token: int = 0) -> Drafter:
    return lambda context, last: propose_ngram_drafts(context, min_n, max_n, num_drafts, drafts_per_matched_token)


def doubling(min_n: int, max_n: int, num_drafts: int, max_drafts: int) -> Drafter:
    """k doubles after a verify that accepted every draft (up to max_drafts), else num_drafts."""

    def draft(context: np.ndarray, last: tuple[int, int]) -> list[int]:
        full = last[0] > 0 and last[1] == last[0]
        k = min(max_drafts, 2 * last[0]) if full else num_drafts
        return propose_ngram_drafts(context, min_n, max_n, k)

    return draft


def unigram_fallback(min_n: int, max_n: int, num_drafts: int, num_unigram_drafts: int) -> Drafter:
    """n in [min_n, max_n] first; when none matches, the last token alone with a short k."""

    def draft(context: np.ndarray, last: tuple[int, int]) -> list[int]:
        return propose_ngram_drafts(context, min_n, max_n, num_drafts) or propose_ngram_drafts(
            context, 1, 1, num_unigram_drafts
        )

    return draft


def configured(config: NgramConfig, num_drafts: int) -> Drafter:
    """The engine's drafter with this config and k (NgramConfig.propose)."""
    return lambda context, last: config.propose(context, num_drafts)


PREVIOUS = NgramConfig(copy_past_end=False, num_unigram_drafts=0)  # the rules before the unigram fallback
CURRENT = NgramConfig()
LABEL_CURRENT = "n2-4 k16, 2/matched, past-end copy, unigram 2 @0.5 (default)"
LABEL_PREVIOUS = "ngram n2-4 k4 (previous default)"


def drafters() -> dict[str, Drafter]:
    """The drafters replayed: the engine's default first, then the previous default and the variants tried."""
    return {
        LABEL_CURRENT: configured(CURRENT, 16),
        "the same at k 4": configured(CURRENT, 4),
        "n2-4 k16, 2/matched, past-end copy": configured(NgramConfig(num_unigram_drafts=0), 16),
        "n2-4 k16, 2/matched, unigram 2 @0.5": configured(NgramConfig(copy_past_end=False), 16),
        "n2-4 k16, 2/matched, past-end, unigram 2 voted, no share minimum": configured(
            NgramConfig(min_unigram_share=0.0), 16
        ),
        LABEL_PREVIOUS: ngram(2, 4, 4),
        "ngram n2-4 k8": ngram(2, 4, 8),
        "ngram n2-4 k16": ngram(2, 4, 16),
        "ngram n1-4 k4": ngram(1, 4, 4),
        "ngram n3-5 k4": ngram(3, 5, 4),
        "ngram n2-4 k8 + n1 k2 fallback": unigram_fallback(2, 4, 8, 2),
        "ngram n2-4 k 4..16 doubling": doubling(2, 4, 4, 16),
        "ngram n2-4 k16, 2 per matched": ngram(2, 4, 16, 2),
    }


ORACLES = {"oracle n>=1 k<=16": (1, 16), "oracle n>=2 k<=16": (2, 16), "oracle n>=1 k<=4": (1, 4)}


def replay_all(
    generated: dict,
    scales: dict[str, CostScale],
    prefix_sizes: tuple[int, ...] = (4,),
    stateful: dict[str, Callable[[], Drafter]] | None = None,
    *,
    baseline_drafters: bool = True,
) -> dict:
    """{"sets": {set: {drafter: figures + speedup per scale}}} over generated = {set: [(id, prompt, output,
    ...)]}; "first_n_prompts": the same over each set's first n prompts (`alise bench spec --num-prompts n`
    selects exactly those), so a bench run compares with the replay of its own prompts. stateful: drafters
    that keep state across steps, as factories (a fresh one per prompt and scale); baseline_drafters=False
    leaves out drafters() (the oracles are always replayed)."""
    fixed = drafters() if baseline_drafters else {}
    per_prompt = {
        name: [_replay_prompt(prompt, output, scales, fixed, stateful or {}) for _, prompt, output, *_ in rows]
        for name, rows in generated.items()
    }
    result = {"sets": {name: _aggregate(tallies) for name, tallies in per_prompt.items()}}
    for size in prefix_sizes:
        result[f"first_{size}_prompts"] = {name: _aggregate(tallies[:size]) for name, tallies in per_prompt.items()}
    return result


def _replay_prompt(
    prompt: list[int],
    output: list[int],
    scales: dict[str, CostScale],
    fixed: dict[str, Drafter],
    stateful: dict[str, Callable[[], Drafter]],
) -> dict[str, dict[str, Tally]]:
    """{drafter or oracle: {scale: tally}} for one prompt."""
    tokens, prompt_len = np.array(prompt + output, dtype=np.int64), len(prompt)
    found: dict[str, dict[str, Tally]] = {}
    for label, (min_n, cap) in ORACLES.items():
        runs = oracle_run_lengths(tokens, prompt_len, min_n, cap)
        found[label] = {name: oracle_tally(runs, CostScale(scale.ratios[: cap + 1])) for name, scale in scales.items()}
    for label, drafter in fixed.items():
        found[label] = {name: drafter_tally(tokens, prompt_len, drafter, scale) for name, scale in scales.items()}
    for label, make in stateful.items():
        found[label] = {name: drafter_tally(tokens, prompt_len, make(), scale) for name, scale in scales.items()}
    return found


def _aggregate(prompts: list[dict[str, dict[str, Tally]]]) -> dict:
    totals: dict[str, dict[str, Tally]] = {}
    for found in prompts:
        for label, by_scale in found.items():
            for name, tally in by_scale.items():
                totals.setdefault(label, {}).setdefault(name, Tally()).add(tally)
    return {label: _figures(by_scale) for label, by_scale in totals.items()}


def _figures(tallies: dict[str, Tally]) -> dict:
    """The figures of the first scale, with the speedup (and the oracle's path) of every scale."""
    first = next(iter(tallies.values())).figures()
    return {**first, "speedup": {name: tally.figures()["speedup"] for name, tally in tallies.items()}}
