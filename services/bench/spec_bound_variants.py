"""`python -m services.bench.spec_bound_variants`: drafter variants replayed on spec_bound's cached outputs.

Session 13's search for the summarise-rewrite gap at batch 1 (docs/benchmarks/spec/README.md). Every
variant is the default drafter (NgramConfig) with one rule changed, replayed on off's greedy outputs
(spec_bound.py --raw cache: no model forward) with every draft verified and under the engine's batch-1
rules (spec_bound_engine.py), against the oracle:

    accepted-copy pointer   once a copy runs, draft on from the position after the last token it predicted
                            (the running copy) instead of the latest occurrence of the last 2-4 tokens
    locality resync         where no suffix of min_n tokens recurs, the last token's first occurrence within
                            window tokens after where the broken copy would have been (a paraphrase that
                            skips or inserts a word and resumes the source), drafting resync_drafts tokens
    sentence stop           drafts end after a token holding . ! ? or a newline (the served tokenizer's)
    drafts per matched token 1..4 (the length rule; default 2)
    pause threshold         the engine rules' per-request pause at acceptance 0.2 (default), 0.1, or none

The pointer and the resync keep state per request across steps (CopyPointer); the rest are stateless.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

import numpy as np

from services.bench.results import build_report, write_report
from services.bench.spec_bound import cost_scales
from services.bench.spec_bound_engine import EngineRules, Proposer, coefficients_from_costs, engine_drafter
from services.bench.spec_bound_sim import Drafter, replay_all
from services.engine.spec.adaptive_drafting import AdaptiveDraftingConfig
from services.engine.spec.ngram_drafter import NgramConfig, copy_continuation, matched_length


@dataclass
class CopyPointer:
    """A stateful proposer (spec_bound_engine.Proposer): the default drafter, plus the running copy.

    After a proposal from `end` at context length L, the copy maps context position L - 1 to `end`; at the
    next call (length L') the running copy's source of the last token is end + L' - L. When that token
    equals the last one (every draft and the model's own token agreed with the source), the copy goes on
    from there (follow) if its match is at least as long as the latest occurrence's; when the suffix has no
    n-gram match, the last token is looked for in the `window` tokens after that source (resync)."""

    config: NgramConfig
    follow: bool = True
    window: int = 0  # resync window in tokens (0 = no resync)
    resync_drafts: int = 2
    _length: int = -1  # context length at the last proposal (-1: no running copy)
    _end: int = -1  # where that proposal's copy matched the last token

    def __call__(self, context: np.ndarray, num_drafts: int) -> tuple[list[int], bool]:
        if num_drafts <= 0:  # a plain step: the running copy's mapping still holds
            return [], False
        pointer = self._end + len(context) - self._length if self._length >= 0 else -1
        self._length = -1
        end, limit = self.config.source(context, num_drafts)
        matched = end >= 0 and matched_length(context, end) >= self.config.min_n
        last = len(context) - 1
        if 0 <= pointer < last and context[pointer] == context[last]:
            if self.follow and (not matched or matched_length(context, pointer) >= matched_length(context, end)):
                end, matched = pointer, True
                limit = min(num_drafts, self.config.drafts_per_matched_token * matched_length(context, end))
        elif self.window and 0 <= pointer and not matched:
            found = np.flatnonzero(context[pointer : min(pointer + self.window, last)] == context[last])
            if len(found):
                end, limit = pointer + int(found[0]), min(num_drafts, self.resync_drafts)
        if end < 0:
            return [], False
        self._length, self._end = len(context), end
        return copy_continuation(context, end, limit, self.config.copy_past_end), matched


def sentence_stop(config: NgramConfig, stop_ids: Collection[int]) -> Proposer:
    """The default drafter whose drafts end after the first token in stop_ids."""

    def propose(context: np.ndarray, num_drafts: int) -> tuple[list[int], bool]:
        drafts, matched = config.propose_with_source(context, num_drafts) if num_drafts > 0 else ([], False)
        for index, token in enumerate(drafts):
            if token in stop_ids:
                return drafts[: index + 1], matched
        return drafts, matched

    return propose


def stateless(config: NgramConfig) -> Callable[[], Proposer]:
    return lambda: (
        lambda context, num_drafts: config.propose_with_source(context, num_drafts) if num_drafts > 0 else ([], False)
    )


def variants(stop_ids: Collection[int]) -> dict[str, tuple[Callable[[], Proposer], AdaptiveDraftingConfig]]:
    """{label: (proposer factory, engine rules' adaptive config)}: the default first."""
    default, adaptive = NgramConfig(), AdaptiveDraftingConfig()
    found = {
        "default": (stateless(default), adaptive),
        "accepted-copy pointer": (lambda: CopyPointer(default), adaptive),
        "pointer + locality resync 16": (lambda: CopyPointer(default, window=16), adaptive),
        "pointer + locality resync 16, 4 drafts": (lambda: CopyPointer(default, window=16, resync_drafts=4), adaptive),
        "locality resync 16 only": (lambda: CopyPointer(default, follow=False, window=16), adaptive),
        "sentence stop": (lambda: sentence_stop(default, stop_ids), adaptive),
        "pause below 0.1": (stateless(default), replace(adaptive, min_acceptance_rate=0.1)),
        "no pause": (stateless(default), replace(adaptive, min_acceptance_rate=0.0)),
    }
    for per_token in (1, 3, 4):
        found[f"{per_token} drafts per matched token"] = (
            stateless(replace(default, drafts_per_matched_token=per_token)),
            adaptive,
        )
    return found


def drafters_of(coefficients, stop_ids: Collection[int]) -> dict[str, Callable[[], Drafter]]:
    """Each variant twice: every draft verified ("all verified: ...") and under the engine's batch-1 rules."""
    made: dict[str, Callable[[], Drafter]] = {}
    for label, (factory, adaptive) in variants(stop_ids).items():
        made[f"all verified: {label}"] = lambda f=factory: _every_draft(f())
        rules = EngineRules(NgramConfig(), 16, adaptive, False)
        made[f"engine rules: {label}"] = lambda f=factory, r=rules: engine_drafter(r, coefficients, f())
    return made


def _every_draft(propose: Proposer) -> Drafter:
    return lambda context, last: propose(context, 16)[0]


def stop_token_ids(tokenizer_spec: str) -> set[int]:
    """The served tokenizer's tokens that end a sentence or a line (. ! ? newline)."""
    from services.common.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_spec)
    return {i for i in range(tokenizer.vocab_size) if any(c in tokenizer.decode([i]) for c in ".!?\n")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.bench.spec_bound_variants", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--raw", type=pathlib.Path, required=True, help="spec_bound.py's --raw cache")
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct", help="for the sentence-stop tokens")
    parser.add_argument("--prefix-sizes", default="4", help="comma-separated: also report each set's first n prompts")
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/spec/spec_bound_variants.json")
    )
    args = parser.parse_args(argv)
    raw = json.loads(args.raw.read_text())
    verify_ms = {int(k): v for k, v in raw["verify_ms"].items()}
    scales, _, _ = cost_scales(raw["generated"], verify_ms)
    coefficients = coefficients_from_costs(verify_ms[0], {k: verify_ms[k] for k in verify_ms if k})
    stateful = drafters_of(coefficients, stop_token_ids(args.tokenizer))
    sizes = tuple(int(size) for size in args.prefix_sizes.split(","))
    figures = replay_all(raw["generated"], {"engine": scales["engine"]}, sizes, stateful, baseline_drafters=False)
    figures["run"] = {"raw": str(args.raw), "load_average_1_5_15": os.getloadavg(),
                      "prompt_ids": {name: [row[0] for row in rows] for name, rows in raw["generated"].items()}}  # fmt: skip
    path = write_report(args.out, build_report("spec_bound_variants", vars(args) | {"raw": str(args.raw)}, figures))
    for selection in ("sets", *(f"first_{size}_prompts" for size in sizes)):
        print(selection)
        for name, rows in figures[selection].items():
            print(f"  {name}")
            for label, row in rows.items():
                print(f"    {label:<58} {row['speedup']['engine']:.3f}x  drafts/step {row['drafts_per_step']:.2f}")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
