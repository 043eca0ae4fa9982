"""GatewayService: protobuf in, GenerationPipeline inside, protobuf out. No logic of its own."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

import grpc

from services.common.contracts import common_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from services.gateway.finish_pb import finish_reason_to_pb, timings_to_pb
from services.gateway.generation import GeneratedChunk, GenerationPipeline
from services.gateway.length_prediction_pb import prediction_to_pb
from services.gateway.model_info import ServedModelCache

SERVICE_NAME = "alise.v1.GatewayService"


class GatewayServicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    """Adapts GatewayService RPCs to the pipeline; errors are AliseErrors mapped by the interceptor."""

    def __init__(self, pipeline: GenerationPipeline, served_models: ServedModelCache, *, max_stop_strings: int) -> None:
        self._pipeline = pipeline
        self._served_models = served_models
        self._max_stop_strings = max_stop_strings  # reported by GetModelInfo

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: gateway_service_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_service_pb2.GenerateResponse]:
        # aclosing: however this handler ends (client cancel, deadline), the pipeline is closed
        # at once, which cancels the engine call, instead of whenever the generator is collected.
        chunks = self._pipeline.generate(request, context.time_remaining)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield _to_response(chunk)

    async def GetModelInfo(  # noqa: N802 - gRPC method name
        self, request: gateway_service_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> gateway_service_pb2.GetModelInfoResponse:
        served = await self._served_models.get()
        info = served.info
        return gateway_service_pb2.GetModelInfoResponse(
            model_name=info.model_name,
            max_context_tokens=info.max_context_tokens,
            vocab_size=info.vocab_size,
            eos_token_id=info.eos_token_id,  # None leaves it unset: the model has no EOS
            max_stop_strings=self._max_stop_strings,
            tokenizer=served.tokenizer.name,
            has_chat_template=served.tokenizer.chat_template is not None,
        )


def _to_response(chunk: GeneratedChunk) -> gateway_service_pb2.GenerateResponse:
    response = gateway_service_pb2.GenerateResponse(
        request_id=chunk.request_id, token_ids=chunk.token_ids, text=chunk.text
    )
    finish = chunk.finish
    if finish is not None:
        response.finish_reason = finish_reason_to_pb(finish.finish_reason)
        response.usage.CopyFrom(
            common_pb2.Usage(prompt_tokens=finish.num_prompt_tokens, completion_tokens=finish.num_completion_tokens)
        )
        response.prediction.CopyFrom(prediction_to_pb(finish.prediction))
        response.timings.CopyFrom(timings_to_pb(finish.timings))
    return response
