"""SpeculativeConfig: --speculative and its knobs, validated once (EngineConfig builds it)."""

from __future__ import annotations

from dataclasses import dataclass

from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.ngram_drafter import NgramConfig

DEFAULT_NUM_SPECULATIVE_TOKENS = 4
MAX_NUM_SPECULATIVE_TOKENS = 16


@dataclass(frozen=True)
class SpeculativeConfig:
    method: SpeculativeMethod = SpeculativeMethod.OFF
    num_speculative_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS  # k: drafts per verify at most
    ngram: NgramConfig = NgramConfig()  # suffix lengths prompt lookup tries (defaults measured there)
    early_exit_layer: int = 0  # L; 0 = the exit heads' best layer for k

    def __post_init__(self) -> None:
        if not 1 <= self.num_speculative_tokens <= MAX_NUM_SPECULATIVE_TOKENS:
            raise ValueError(
                f"num_speculative_tokens must be in [1, {MAX_NUM_SPECULATIVE_TOKENS}], got {self.num_speculative_tokens}"
            )
        if self.early_exit_layer < 0:
            raise ValueError(f"early_exit_layer must be >= 0, got {self.early_exit_layer}")

    @property
    def enabled(self) -> bool:
        return self.method is not SpeculativeMethod.OFF
