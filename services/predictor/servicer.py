"""alise.v1.PredictorService: protobuf in, `PromptInput`s to the batcher, protobuf out.

Validation happens here, at the edge: a request with no inputs, too many inputs, or an input with
neither text nor a token count is INVALID_ARGUMENT before any model work is queued.
"""

from __future__ import annotations

from typing import Sequence

import grpc

from services.common.contracts import common_pb2, predictor_service_pb2, predictor_service_pb2_grpc
from services.common.errors import InvalidRequest
from services.predictor.batcher import MicroBatcher
from services.predictor.model import LengthDistribution, PromptInput

SERVICE_NAME = "alise.v1.PredictorService"


def to_prompt_inputs(
    request: predictor_service_pb2.PredictOutputLengthRequest, *, max_inputs: int
) -> list[PromptInput]:
    """Domain inputs of a request; InvalidRequest naming the first problem found."""
    num_inputs = len(request.inputs)
    if num_inputs == 0:
        raise InvalidRequest("inputs must not be empty")
    if num_inputs > max_inputs:
        raise InvalidRequest(f"at most {max_inputs} inputs per request, got {num_inputs}")
    inputs = []
    for index, item in enumerate(request.inputs):
        if not item.prompt_text and item.num_prompt_tokens == 0:
            raise InvalidRequest(f"inputs[{index}]: prompt_text is empty and num_prompt_tokens is 0")
        inputs.append(PromptInput(item.prompt_text, item.num_prompt_tokens, item.served_model))
    return inputs


def to_response(
    distributions: Sequence[LengthDistribution],
) -> predictor_service_pb2.PredictOutputLengthResponse:
    """One OutputLengthPrediction per distribution, same order, source PREDICTOR."""
    response = predictor_service_pb2.PredictOutputLengthResponse(
        model_version=distributions[0].model_version if distributions else ""
    )
    for distribution in distributions:
        prediction = response.predictions.add(
            mean_tokens=distribution.mean_tokens,
            model_version=distribution.model_version,
            source=common_pb2.PREDICTION_SOURCE_PREDICTOR,
        )
        for quantile in distribution.quantiles:
            prediction.quantiles.add(level=quantile.level, num_tokens=quantile.num_tokens)
    return response


class PredictorServicer(predictor_service_pb2_grpc.PredictorServiceServicer):
    """Thin adapter over a MicroBatcher."""

    def __init__(self, batcher: MicroBatcher, *, max_inputs_per_request: int) -> None:
        self._batcher = batcher
        self._max_inputs_per_request = max_inputs_per_request

    async def PredictOutputLength(
        self,
        request: predictor_service_pb2.PredictOutputLengthRequest,
        context: grpc.aio.ServicerContext,
    ) -> predictor_service_pb2.PredictOutputLengthResponse:
        inputs = to_prompt_inputs(request, max_inputs=self._max_inputs_per_request)
        return to_response(await self._batcher.submit(inputs))
