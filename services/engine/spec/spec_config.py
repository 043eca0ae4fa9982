"""SpeculativeConfig: --speculative and its knobs, validated once (EngineConfig builds it)."""

from __future__ import annotations

from dataclasses import dataclass

from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.ngram_drafter import NgramConfig

# --num-speculative-tokens 0 (the default) = the method's own k: n-gram drafts size themselves by their
# match (NgramConfig.drafts_per_matched_token) and the batch's two-rate acceptance model
# (adaptive_drafting.py), so its k is only a cap: 16 (replayed on SmolLM2's greedy outputs, k 16 beats
# k 4 on all three prompt sets; docs/benchmarks/spec/README.md). An early-exit draft costs L layers of
# model time each, so its k stays 4 (the exit heads' measured costs and agreement, exit_heads.json).
DEFAULT_NUM_SPECULATIVE_TOKENS = 0
MAX_NUM_SPECULATIVE_TOKENS = 16
METHOD_NUM_SPECULATIVE_TOKENS = {SpeculativeMethod.NGRAM: 16, SpeculativeMethod.EARLY_EXIT: 4, SpeculativeMethod.OFF: 4}


@dataclass(frozen=True)
class SpeculativeConfig:
    method: SpeculativeMethod = SpeculativeMethod.OFF
    # k: drafts per verify at most; 0 = the method's own (METHOD_NUM_SPECULATIVE_TOKENS), resolved here
    num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS
    ngram: NgramConfig = NgramConfig()  # suffix lengths prompt lookup tries (defaults measured there)
    early_exit_layer: int = 0  # L; 0 = the exit heads' best layer for k

    def __post_init__(self) -> None:
        if self.num_speculative_tokens == 0:
            object.__setattr__(self, "num_speculative_tokens", METHOD_NUM_SPECULATIVE_TOKENS[self.method])
        if not 1 <= self.num_speculative_tokens <= MAX_NUM_SPECULATIVE_TOKENS:
            raise ValueError(
                f"num_speculative_tokens must be in [1, {MAX_NUM_SPECULATIVE_TOKENS}] (0 = the method's default), "
                f"got {self.num_speculative_tokens}"
            )
        if self.early_exit_layer < 0:
            raise ValueError(f"early_exit_layer must be >= 0, got {self.early_exit_layer}")

    @property
    def enabled(self) -> bool:
        return self.method is not SpeculativeMethod.OFF
