"""The predictor's answer becomes the gateway's OutputLengthPrediction once, at the predictor client's
edge, and goes back on the wire unchanged (engine request, client response, feedback report)."""

from __future__ import annotations

import math

import pytest

from services.common.contracts import common_pb2, predictor_service_pb2
from services.gateway.length_prediction import LengthQuantile, OutputLengthPrediction, PredictionSource
from services.gateway.length_prediction_pb import prediction_from_pb, prediction_to_pb
from services.gateway.prediction import OutputLengthEstimator, PredictionQuery, _checked_prediction


def _reply(mean_tokens: float, *, model_version: str = "", reply_version: str = "reply-v2"):
    message = common_pb2.OutputLengthPrediction(
        mean_tokens=mean_tokens,
        quantiles=[
            common_pb2.LengthQuantile(level=0.1, num_tokens=3.5),
            common_pb2.LengthQuantile(level=0.9, num_tokens=90.25),
        ],
        model_version=model_version,
        source=common_pb2.PREDICTION_SOURCE_UNSPECIFIED,
    )
    return predictor_service_pb2.PredictOutputLengthResponse(predictions=[message], model_version=reply_version)


def test_the_predictors_answer_is_a_domain_object_marked_predictor_with_the_replys_version():
    prediction = _checked_prediction(_reply(41.7))
    assert prediction == OutputLengthPrediction(
        mean_tokens=pytest.approx(41.7),
        source=PredictionSource.PREDICTOR,
        quantiles=(LengthQuantile(pytest.approx(0.1), 3.5), LengthQuantile(pytest.approx(0.9), 90.25)),
        model_version="reply-v2",
    )
    assert _checked_prediction(_reply(41.7, model_version="own-v1")).model_version == "own-v1"


@pytest.mark.parametrize("mean_tokens", [math.nan, math.inf, -1.0])
def test_a_malformed_answer_is_no_prediction(mean_tokens):
    assert _checked_prediction(_reply(mean_tokens)) is None
    assert _checked_prediction(predictor_service_pb2.PredictOutputLengthResponse()) is None


def test_the_wire_round_trip_gives_back_the_same_message():
    message = _reply(41.7).predictions[0]
    message.source = common_pb2.PREDICTION_SOURCE_PREDICTOR
    message.model_version = "v3"
    assert prediction_to_pb(prediction_from_pb(message, PredictionSource.PREDICTOR)) == message
    for source, wire in [
        (PredictionSource.CLIENT_HINT, common_pb2.PREDICTION_SOURCE_CLIENT_HINT),
        (PredictionSource.FALLBACK, common_pb2.PREDICTION_SOURCE_FALLBACK),
    ]:
        assert prediction_to_pb(OutputLengthPrediction(7.0, source)) == common_pb2.OutputLengthPrediction(
            mean_tokens=7.0, source=wire
        )


def test_fallbacks_are_clipped_to_max_tokens_and_say_their_source():
    estimator = OutputLengthEstimator(None, timeout_s=0.05, fallback_output_tokens=256)
    query = PredictionQuery("hi", 2, "m", max_tokens=100, expected_output_tokens=None)
    assert estimator.fallback(query) == OutputLengthPrediction(100.0, PredictionSource.FALLBACK)
    hinted = PredictionQuery("hi", 2, "m", max_tokens=100, expected_output_tokens=30)
    assert estimator.fallback(hinted) == OutputLengthPrediction(30.0, PredictionSource.CLIENT_HINT)
