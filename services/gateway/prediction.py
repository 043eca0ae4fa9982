"""Output-length estimate for one request: the predictor if it answers in time, else a fallback.

The predictor only improves scheduling; it must never fail or noticeably slow a request. So the call
has a short deadline (tens of ms) and any failure (timeout, UNAVAILABLE, a malformed answer, no
predictor configured) falls back to the client's expected_output_tokens hint (source CLIENT_HINT),
or to a fixed prior (source FALLBACK). Fallback estimates are clipped to max_tokens, since the
output cannot be longer than that.

This is the predictor client's edge: the answer becomes an OutputLengthPrediction (length_prediction.py)
here, and no protobuf prediction travels further into the gateway.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import grpc

from services.common.contracts import predictor_service_pb2, predictor_service_pb2_grpc
from services.common.errors import NotReady
from services.gateway.length_prediction import OutputLengthPrediction, PredictionSource
from services.gateway.length_prediction_pb import prediction_from_pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionQuery:
    """What the predictor needs to know of one request."""

    prompt_text: str  # the prompt as text (features are computed from it)
    num_prompt_tokens: int  # prompt length in the served model's tokens
    served_model: str  # model name, for predictors trained per model
    max_tokens: int  # resolved max_tokens: fallback estimates never exceed it
    expected_output_tokens: int | None  # the client's hint, None when absent


class OutputLengthEstimator:
    """Asks the predictor with a deadline; never raises (except cancellation)."""

    def __init__(
        self,
        stub: predictor_service_pb2_grpc.PredictorServiceStub | None,
        *,
        timeout_s: float,
        fallback_output_tokens: int,
    ) -> None:
        self._stub = stub  # None = no predictor configured
        self._timeout_s = timeout_s  # deadline of one PredictOutputLength call
        self._fallback_output_tokens = fallback_output_tokens  # the prior, in tokens

    @property
    def has_predictor(self) -> bool:
        """False when no predictor is configured (every estimate is a fallback)."""
        return self._stub is not None

    async def estimate(
        self, query: PredictionQuery, *, time_remaining_s: float | None = None
    ) -> OutputLengthPrediction:
        """The predictor's answer (source PREDICTOR) or a fallback (CLIENT_HINT / FALLBACK)."""
        if self._stub is not None:
            timeout_s = self._timeout_s
            if time_remaining_s is not None:
                timeout_s = max(0.0, min(timeout_s, time_remaining_s))
            prediction = await _ask_predictor(self._stub, query, timeout_s)
            if prediction is not None:
                return prediction
        return self.fallback(query)

    def fallback(self, query: PredictionQuery) -> OutputLengthPrediction:
        """The estimate used when the predictor has no answer."""
        if query.expected_output_tokens is not None:
            mean_tokens = min(query.expected_output_tokens, query.max_tokens)
            source = PredictionSource.CLIENT_HINT
        else:
            mean_tokens = min(self._fallback_output_tokens, query.max_tokens)
            source = PredictionSource.FALLBACK
        return OutputLengthPrediction(mean_tokens=float(mean_tokens), source=source)


async def _ask_predictor(
    stub: predictor_service_pb2_grpc.PredictorServiceStub, query: PredictionQuery, timeout_s: float
) -> OutputLengthPrediction | None:
    """One PredictOutputLength call; None (logged at DEBUG) on any failure."""
    request = predictor_service_pb2.PredictOutputLengthRequest(
        inputs=[
            predictor_service_pb2.PredictionInput(
                prompt_text=query.prompt_text,
                num_prompt_tokens=query.num_prompt_tokens,
                served_model=query.served_model,
            )
        ]
    )
    try:
        reply = await stub.PredictOutputLength(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        log.debug("predictor gave no answer (%s: %s); falling back", error.code().name, error.details())
        return None
    except NotReady as error:  # a predictor pool with no serving replica
        log.debug("%s; falling back", error)
        return None
    except Exception as error:  # noqa: BLE001 - the predictor must never fail a request
        log.warning("predictor call failed unexpectedly (%r); falling back", error)
        return None
    return _checked_prediction(reply)


def _checked_prediction(reply: predictor_service_pb2.PredictOutputLengthResponse) -> OutputLengthPrediction | None:
    """The single prediction of a reply, marked PREDICTOR (with the reply's model version when it
    names none); None when the reply is malformed."""
    if len(reply.predictions) != 1:
        log.warning("predictor returned %d predictions for 1 input; falling back", len(reply.predictions))
        return None
    message = reply.predictions[0]
    if not math.isfinite(message.mean_tokens) or message.mean_tokens < 0:
        log.warning("predictor returned mean_tokens=%s; falling back", message.mean_tokens)
        return None
    prediction = prediction_from_pb(message, PredictionSource.PREDICTOR)
    if not prediction.model_version:
        prediction = dataclasses.replace(prediction, model_version=reply.model_version)
    return prediction
