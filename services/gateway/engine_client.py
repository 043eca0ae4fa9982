"""Client side of EngineService: model info, and one generation stream with errors mapped.

Engine failures become the gateway's own error types, so the client sees a status that says what
happened rather than INTERNAL:

    engine status        -> gateway error (client status)
    UNAVAILABLE          -> NotReady "engine unavailable: ..."        (UNAVAILABLE)
    DEADLINE_EXCEEDED    -> DeadlineExceeded                          (DEADLINE_EXCEEDED)
    INVALID_ARGUMENT     -> InvalidRequest with the engine's message  (INVALID_ARGUMENT)
    RESOURCE_EXHAUSTED   -> Overloaded with the engine's message      (RESOURCE_EXHAUSTED)
                            (EngineQueueFull when its refusal reason is QUEUE_FULL: the replica is
                            full, not the request too big or too late; see engine_saturation)
    CANCELLED            -> NotReady "engine cancelled ..."           (UNAVAILABLE; e.g. engine shutdown)
    anything else        -> AliseError naming the engine status       (INTERNAL)

The engine's refusal reason (trailing metadata `alise-refusal-reason`, services/common/refusal.py)
is read, never its message, and passed on in the mapped error, so the gateway's client gets it too.

Cancellation: `generate` is an async generator whose `finally` cancels the engine call, so when the
client cancels (the handler task is cancelled), the deadline passes, or the gateway stops reading
(a stop string matched), the engine sees its call cancelled and frees the request's KV blocks.
"""

from __future__ import annotations

from typing import AsyncIterator

import grpc

from services.common.contracts import common_pb2, engine_service_pb2, engine_service_pb2_grpc
from services.common.errors import AliseError, DeadlineExceeded, InvalidRequest, NotReady, Overloaded
from services.common.refusal import RefusalReason, refusal_reason_of
from services.gateway.length_prediction import OutputLengthPrediction
from services.gateway.length_prediction_pb import prediction_to_pb
from services.gateway.model_info import ModelInfo
from services.gateway.validation import ResolvedRequest


class EngineQueueFull(Overloaded):
    """The engine refused because its queue is at a cap: any request would have been refused."""


class EngineClient:
    """One engine replica behind one long-lived channel (owned by the caller)."""

    def __init__(self, channel: grpc.aio.Channel, address: str) -> None:
        self._stub = engine_service_pb2_grpc.EngineServiceStub(channel)
        self.address = address  # host:port, for error messages

    async def get_model_info(self, timeout_s: float) -> ModelInfo:
        """One GetModelInfo call; raises NotReady when the engine cannot answer."""
        try:
            reply = await self._stub.GetModelInfo(
                engine_service_pb2.EngineServiceGetModelInfoRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            raise NotReady(
                f"engine unavailable: GetModelInfo on {self.address} failed: {error.code().name}: {error.details()}"
            ) from error
        if reply.vocab_size == 0 or reply.max_context_tokens == 0:
            raise NotReady(
                f"engine at {self.address} reported vocab_size={reply.vocab_size}, "
                f"max_context_tokens={reply.max_context_tokens}; both must be > 0"
            )
        return ModelInfo(
            model_name=reply.model_name,
            max_context_tokens=reply.max_context_tokens,
            vocab_size=reply.vocab_size,
            eos_token_id=reply.eos_token_id if reply.HasField("eos_token_id") else None,
            tokenizer_spec=reply.tokenizer,
        )

    async def get_stats(self, timeout_s: float) -> engine_service_pb2.EngineServiceGetStatsResponse:
        """One GetStats call (load figures for routing); raises grpc.aio.AioRpcError on failure."""
        return await self._stub.GetStats(engine_service_pb2.EngineServiceGetStatsRequest(), timeout=timeout_s)

    async def generate(
        self, request: engine_service_pb2.EngineServiceGenerateRequest, *, timeout_s: float | None
    ) -> AsyncIterator[engine_service_pb2.EngineServiceGenerateResponse]:
        """Streams the engine's messages; raises mapped errors; always cancels the call on exit."""
        call = self._stub.Generate(request, timeout=timeout_s)
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as error:
            raise self._map_error(error) from error
        finally:
            call.cancel()  # a no-op when the call already finished

    def _map_error(self, error: grpc.aio.AioRpcError) -> AliseError:
        code, details = error.code(), error.details() or ""
        reason = refusal_reason_of(error.trailing_metadata())
        if code == grpc.StatusCode.UNAVAILABLE:
            return NotReady(f"engine unavailable: {self.address}: {details}", refusal_reason=reason)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"deadline exceeded while generating on engine {self.address}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidRequest(details)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # RESOURCE_EXHAUSTED alone also covers refusals that say nothing about the queue (a
            # deadline that cannot be met, a request larger than the KV cache)
            refused = EngineQueueFull if reason == RefusalReason.QUEUE_FULL else Overloaded
            return refused(details, refusal_reason=reason)
        if code == grpc.StatusCode.CANCELLED:
            return NotReady(f"engine {self.address} cancelled the request: {details}")
        return AliseError(f"engine {self.address} failed: {code.name}: {details}")


def build_engine_request(
    engine_request_id: str,
    request: ResolvedRequest,
    prediction: OutputLengthPrediction,
) -> engine_service_pb2.EngineServiceGenerateRequest:
    """The engine's view of a resolved request: every sampling field set, stop strings omitted.

    Stop strings are matched by the gateway on text (the engine only sees token ids), so they are
    not forwarded; the gateway cancels the engine call when one matches.
    """
    sampling = request.sampling
    return engine_service_pb2.EngineServiceGenerateRequest(
        request_id=engine_request_id,
        prompt_token_ids=request.prompt_token_ids,
        sampling=common_pb2.SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            seed=sampling.seed,
            ignore_eos=sampling.ignore_eos,
            min_tokens=sampling.min_tokens,
            speculative=sampling.speculative,
        ),
        prediction=prediction_to_pb(prediction),
        priority_class=request.priority_class,
    )
