"""The OpenAI endpoints: thin adapters from HTTP bodies to the GenerationPipeline and back.

Both generation endpoints translate their body into a GenerateRequest (translate.py) and run the
same `GenerationPipeline.generate` as the gRPC servicer: one validation, one predictor call, one
routing decision. Errors before the first chunk get an HTTP status; once a stream has started, an
error is sent as a last `data: {"error": ...}` event and the stream ends without `[DONE]`.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import AsyncIterator, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.common.contracts import gateway_service_pb2
from services.common.errors import AliseError
from services.gateway.generation import GeneratedChunk, GenerationPipeline, TimeRemaining
from services.gateway.http.disconnect import ClientGone, EventStreamResponse, unless_disconnected
from services.gateway.http.errors import HttpApiError, error_body, from_exception, invalid_parameter
from services.gateway.http.responses import (
    SSE_DONE,
    ApiKind,
    ResponseHeader,
    delta_event,
    encode_event,
    full_response,
    usage_event,
)
from services.gateway.http.schemas import ChatCompletionBody, CompletionBody, SamplingBody
from services.gateway.http.translate import chat_request, completion_request
from services.gateway.model_info import ServedModelCache

CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away"; nobody reads it


def request_deadline(body: SamplingBody, default_timeout_s: float | None) -> TimeRemaining:
    """The request's deadline as the pipeline reads it (seconds left), from now.

    `timeout` in the body (seconds; OpenAI SDK users pass it in extra_body) overrides the gateway's
    default. The pipeline hands what is left to the predictor call and, as the gRPC deadline, to the
    engine call, exactly as a gRPC client's deadline: on expiry the engine drops the request and frees
    its KV, and the client gets 504 (or, mid-stream, an error event and the end of the stream).
    """
    timeout_s = body.timeout if body.timeout is not None else default_timeout_s
    if timeout_s is None:
        return lambda: None
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise invalid_parameter(f"timeout must be a number of seconds > 0, got {timeout_s}", "timeout")
    deadline_s = time.monotonic() + timeout_s
    return lambda: deadline_s - time.monotonic()


class OpenAiRoutes:
    """Handlers of /v1/completions, /v1/chat/completions, /v1/models (shared by all requests)."""

    def __init__(
        self,
        pipeline: GenerationPipeline,
        served_models: ServedModelCache,
        *,
        request_timeout_s: float | None = None,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._pipeline = pipeline
        self._request_timeout_s = request_timeout_s  # deadline of a request without `timeout`; None = none
        self._served_models = served_models
        self._clock_s = clock_s  # wall clock for `created` fields, seconds
        self._started_s = int(clock_s())

    async def completions(self, body: CompletionBody, request: Request) -> Response:
        return await self._generate(request, body, completion_request(body), ApiKind.COMPLETION)

    async def chat_completions(self, body: ChatCompletionBody, request: Request) -> Response:
        return await self._generate(request, body, chat_request(body), ApiKind.CHAT)

    async def models(self) -> Response:
        return JSONResponse({"object": "list", "data": [await self._model_card()]})

    async def model(self, model_id: str) -> Response:
        """GET /v1/models/{model_id}: the served model, or 404 for any other id."""
        card = await self._model_card()
        if model_id != card["id"]:
            raise _model_not_found(model_id, card["id"])
        return JSONResponse(card)

    async def _model_card(self) -> dict:
        info = (await self._served_models.get()).info
        return {
            "id": info.model_name,
            "object": "model",
            "created": self._started_s,
            "owned_by": "alise",
            "max_model_len": info.max_context_tokens,
        }

    async def _generate(
        self,
        request: Request,
        body: SamplingBody,
        generate_request: gateway_service_pb2.GenerateRequest,
        kind: ApiKind,
    ) -> Response:
        created_s = int(self._clock_s())
        time_remaining_s = request_deadline(body, self._request_timeout_s)
        model = (await self._served_models.get()).info.model_name
        if body.model and body.model != model:
            raise _model_not_found(body.model, model)
        chunks = self._pipeline.generate(generate_request, time_remaining_s)
        try:
            if not body.stream:
                text, last = await unless_disconnected(request, _collect(chunks))
                header = ResponseHeader.build(kind, last.request_id, model, created_s)
                return JSONResponse(full_response(header, text, last.finish))
            first = await unless_disconnected(request, anext(chunks))
        except ClientGone:
            await chunks.aclose()
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except BaseException:
            await chunks.aclose()
            raise
        header = ResponseHeader.build(kind, first.request_id, model, created_s)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return EventStreamResponse(_events(header, first, chunks, include_usage))


def _model_not_found(asked: str, served: str) -> HttpApiError:
    return HttpApiError(
        404,
        f"The model {asked!r} does not exist; this server serves {served!r}",
        error_type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


async def _collect(chunks: AsyncIterator[GeneratedChunk]) -> tuple[str, GeneratedChunk]:
    """All text of a generation and its final chunk."""
    parts = []
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            parts.append(chunk.text)
            if chunk.finish is not None:
                return "".join(parts), chunk
    raise AliseError("the generation ended without a final chunk")


async def _events(
    header: ResponseHeader, first: GeneratedChunk, chunks: AsyncIterator[GeneratedChunk], include_usage: bool
) -> AsyncIterator[bytes]:
    """The SSE events of one stream; closing this generator closes the pipeline's (engine cancelled)."""
    async with contextlib.aclosing(chunks):
        chunk, is_first = first, True
        try:
            while True:
                if chunk.text or chunk.finish is not None or is_first:
                    yield delta_event(header, chunk.text, chunk.finish, first=is_first, include_usage=include_usage)
                    is_first = False
                if chunk.finish is not None:
                    break
                chunk = await anext(chunks)
        except Exception as error:  # the status line is long gone: report in band, no [DONE]
            failure = from_exception(error)
            yield encode_event(error_body(str(failure), failure.error_type, failure.param, failure.code))
            return
    if include_usage:
        yield usage_event(header, chunk.finish)
    yield SSE_DONE
