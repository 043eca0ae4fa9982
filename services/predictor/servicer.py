"""alise.v1.PredictorService: protobuf in, domain objects to the batcher / intake, protobuf out.

Validation happens here, at the edge: a request with no inputs, too many inputs, or an input with
neither text nor a token count is INVALID_ARGUMENT before any model work is queued; so is an empty
or oversized ReportFeedback.
"""

from __future__ import annotations

import asyncio
from typing import Sequence

import grpc

from services.common.contracts import common_pb2, predictor_service_pb2, predictor_service_pb2_grpc
from services.common.errors import InvalidRequest
from services.predictor.batcher import MicroBatcher
from services.predictor.feedback_intake import FeedbackIntake
from services.predictor.feedback_store import FeedbackRecord
from services.predictor.model import LengthDistribution, PromptInput
from services.predictor.reload import ModelHolder

SERVICE_NAME = "alise.v1.PredictorService"
_KNOWN_LENGTH_FINISHES = (common_pb2.FINISH_REASON_EOS, common_pb2.FINISH_REASON_STOP)


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


def _quantile(prediction: common_pb2.OutputLengthPrediction, level: float) -> float | None:
    for quantile in prediction.quantiles:
        if abs(quantile.level - level) < 1e-6:
            return float(quantile.num_tokens)
    return None


def to_feedback_record(item: predictor_service_pb2.FinishedRequest) -> FeedbackRecord | None:
    """The stored form of one report; None for one that says nothing about lengths (ignored)."""
    censored = item.finish_reason == common_pb2.FINISH_REASON_LENGTH
    if not (censored or item.finish_reason in _KNOWN_LENGTH_FINISHES) or item.num_output_tokens == 0:
        return None
    ours = item.prediction.source == common_pb2.PREDICTION_SOURCE_PREDICTOR
    return FeedbackRecord(
        request_id=item.request_id,
        prompt_text=item.prompt_text,
        num_prompt_tokens=item.num_prompt_tokens,
        num_output_tokens=item.num_output_tokens,
        served_model=item.served_model,
        censored=censored,
        max_tokens=item.max_tokens,
        predicted_mean_tokens=float(item.prediction.mean_tokens) if ours else None,
        predicted_p50_tokens=_quantile(item.prediction, 0.5) if ours else None,
        predicted_p90_tokens=_quantile(item.prediction, 0.9) if ours else None,
        prediction_model_version=item.prediction.model_version if ours else "",
        finished_at_unix_s=item.finished_at_unix_s,
    )


class PredictorServicer(predictor_service_pb2_grpc.PredictorServiceServicer):
    """Thin adapter over the batcher, the model holder and the feedback intake."""

    def __init__(
        self,
        batcher: MicroBatcher,
        holder: ModelHolder,
        intake: FeedbackIntake,
        *,
        max_inputs_per_request: int,
        max_feedback_per_request: int,
    ) -> None:
        self._batcher = batcher
        self._holder = holder
        self._intake = intake
        self._max_inputs_per_request = max_inputs_per_request
        self._max_feedback_per_request = max_feedback_per_request

    async def PredictOutputLength(self, request, context: grpc.aio.ServicerContext):  # noqa: N802
        inputs = to_prompt_inputs(request, max_inputs=self._max_inputs_per_request)
        return to_response(await self._batcher.submit(inputs))

    async def ReportFeedback(self, request, context: grpc.aio.ServicerContext):  # noqa: N802
        count = len(request.requests)
        if count == 0:
            raise InvalidRequest("requests must not be empty")
        if count > self._max_feedback_per_request:
            raise InvalidRequest(f"at most {self._max_feedback_per_request} requests per call, got {count}")
        records = [record for item in request.requests if (record := to_feedback_record(item)) is not None]
        await self._intake.accept(records)
        return predictor_service_pb2.ReportFeedbackResponse(num_accepted=len(records), num_ignored=count - len(records))

    async def GetStats(self, request, context: grpc.aio.ServicerContext):  # noqa: N802
        live = await asyncio.to_thread(self._intake.window.snapshot)
        model = self._holder.current.model
        return predictor_service_pb2.PredictorServiceGetStatsResponse(
            model_version=model.model_version,
            model_dir=str(model.model_dir),
            num_reloads=self._holder.num_reloads,
            num_failed_reloads=self._holder.num_failed_reloads,
            num_predictions=self._batcher.num_inputs,
            num_batches=self._batcher.num_batches,
            num_feedback_accepted=self._intake.num_accepted,
            num_feedback_censored=self._intake.num_censored,
            live=predictor_service_pb2.LiveAccuracy(
                num_requests=live.num_requests,
                window_size=live.window_size,
                kendall_tau=live.kendall_tau,
                mae_tokens=live.mae_tokens,
                coverage_p90=live.coverage_p90,
            ),
            execution_providers=model.providers,
        )

    async def ReloadModel(self, request, context: grpc.aio.ServicerContext):  # noqa: N802
        changed = await self._holder.reload()
        return predictor_service_pb2.ReloadModelResponse(
            model_version=self._holder.current.model_version,
            changed=changed,
            error=self._holder.last_reload_error,
        )
