"""An output-length estimate as the gateway's own object (not the predictor's wire message).

Made once per request by the estimator (prediction.py: the predictor's answer, converted at that
edge, or a fallback) and carried unchanged to the engine request, the client's final message and the
predictor's feedback; length_prediction_pb.py converts it at those edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PredictionSource(StrEnum):
    """Where an estimate came from; a member's value is its `source` metric label."""

    PREDICTOR = "predictor"  # the predictor service answered in time
    CLIENT_HINT = "client_hint"  # the client's expected_output_tokens (clipped to max_tokens)
    FALLBACK = "fallback"  # the fixed prior (clipped to max_tokens): no predictor, or no answer in time


@dataclass(frozen=True)
class LengthQuantile:
    level: float  # cumulative probability in (0, 1), e.g. 0.9 for p90
    num_tokens: float  # output length in tokens at that probability


@dataclass(frozen=True)
class OutputLengthPrediction:
    """Invariant: mean_tokens is finite and >= 0 (the estimator falls back otherwise)."""

    mean_tokens: float  # expected number of output tokens
    source: PredictionSource
    quantiles: tuple[LengthQuantile, ...] = ()  # in increasing level order, as the predictor sent them
    model_version: str = ""  # the predictor model's version ("" for fallbacks)
