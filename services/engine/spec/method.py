"""Which drafter proposes the tokens a speculative step verifies."""

from __future__ import annotations

from enum import StrEnum


class SpeculativeMethod(StrEnum):
    """--speculative: where draft tokens come from (verification is the same for all)."""

    OFF = "off"  # one token per decode step
    NGRAM = "ngram"  # prompt lookup: the tokens that followed the latest earlier match of the last n tokens
    EARLY_EXIT = "early-exit"  # the served model's first L layers, a trained exit head, the final norm and LM head
