"""The edge where OutputLengthPrediction (length_prediction.py) crosses the wire as alise.v1.OutputLengthPrediction.

from_pb: once, in the predictor client (prediction.py); to_pb: at the engine request, the client's
final message and the feedback report. Values are float32 on the wire; the predictor's arrive as
float32 already, so a round trip through the domain object gives back the same message.
"""

from __future__ import annotations

from services.common.contracts import common_pb2
from services.gateway.length_prediction import LengthQuantile, OutputLengthPrediction, PredictionSource

_TO_PB = {
    PredictionSource.PREDICTOR: common_pb2.PREDICTION_SOURCE_PREDICTOR,
    PredictionSource.CLIENT_HINT: common_pb2.PREDICTION_SOURCE_CLIENT_HINT,
    PredictionSource.FALLBACK: common_pb2.PREDICTION_SOURCE_FALLBACK,
}


def prediction_from_pb(message: common_pb2.OutputLengthPrediction, source: PredictionSource) -> OutputLengthPrediction:
    """The domain estimate of a wire prediction; `source` replaces the message's own (the gateway
    marks where it got the estimate, whatever the sender wrote)."""
    return OutputLengthPrediction(
        mean_tokens=message.mean_tokens,
        source=source,
        quantiles=tuple(LengthQuantile(q.level, q.num_tokens) for q in message.quantiles),
        model_version=message.model_version,
    )


def prediction_to_pb(prediction: OutputLengthPrediction) -> common_pb2.OutputLengthPrediction:
    return common_pb2.OutputLengthPrediction(
        mean_tokens=prediction.mean_tokens,
        quantiles=[common_pb2.LengthQuantile(level=q.level, num_tokens=q.num_tokens) for q in prediction.quantiles],
        model_version=prediction.model_version,
        source=_TO_PB[prediction.source],
    )
