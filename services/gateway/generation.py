"""One generation end to end: validate, predict, forward to the engine, relay tokens and text.

    GenerateRequest -> EnginePool.check_room (every replica known full: RESOURCE_EXHAUSTED at once)
                    -> resolve_generate_request -> OutputLengthEstimator.estimate
                    -> EnginePool.generate (stream from one replica) -> OutputAssembler (detokenize, stop strings)
                    -> GeneratedChunk ... (the last one carries a FinishSummary)

The engine sees a gateway-made request id (`gw-<uuid>`), unique among all requests of all clients,
because client request ids may repeat across clients. The client's deadline becomes the engine
call's timeout, and leaving the stream early (client cancel, deadline, stop string) cancels the
engine call (see engine_client).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from services.common.contracts import common_pb2, engine_service_pb2, gateway_service_pb2
from services.common.errors import AliseError, DeadlineExceeded
from services.gateway.admission import InFlightLimit
from services.gateway.detokenizer import IncrementalDetokenizer
from services.gateway.engine_client import build_engine_request
from services.gateway.engine_pool import EnginePool
from services.gateway.feedback import FeedbackReporter, FinishedGeneration
from services.gateway.finish import FinishReason, Timings
from services.gateway.finish_pb import finish_reason_from_pb, timings_from_pb
from services.gateway.length_prediction import OutputLengthPrediction
from services.gateway.metrics import GatewayMetrics, RequestRecorder
from services.gateway.model_info import ServedModel, ServedModelCache
from services.gateway.prediction import OutputLengthEstimator, PredictionQuery
from services.gateway.prompt_input import check_prompt_size, num_prompt_chars
from services.gateway.stop_strings import StopScan, StopStringMatcher
from services.gateway.validation import RequestLimits, ResolvedRequest, resolve_generate_request

# Text prompts longer than this are tokenized in a worker thread, so one huge prompt does not stall
# every other stream on the event loop (SentencePiece encodes ~1 MB of text in ~0.1 s).
MAX_INLINE_TOKENIZE_CHARS = 16_384
TimeRemaining = Callable[[], float | None]  # seconds left of the client's deadline; None = no deadline


@dataclass(frozen=True)
class FinishSummary:
    """What the final message of a generation reports (the servicer and the HTTP API convert it)."""

    finish_reason: FinishReason
    num_prompt_tokens: int  # prompt length, BOS included
    num_completion_tokens: int  # token ids returned (on a stop string: up to the message that matched)
    # the estimate the engine scheduled with (the estimator's), echoed unchanged to the client and the
    # predictor's feedback
    prediction: OutputLengthPrediction
    timings: Timings  # the engine's, or the gateway's own when it ended the call early


@dataclass(frozen=True)
class GeneratedChunk:
    """One message of the client's stream."""

    request_id: str  # the client's request id (or the generated one)
    token_ids: list[int]  # ids generated since the previous chunk
    text: str  # text released since the previous chunk (may lag token_ids)
    finish: FinishSummary | None  # set on the final chunk only


class GenerationPipeline:
    """Runs generations; one instance per gateway, shared by all requests (holds no per-request state)."""

    def __init__(
        self,
        served_models: ServedModelCache,
        estimator: OutputLengthEstimator,
        engine: EnginePool,
        limits: RequestLimits,
        feedback: FeedbackReporter | None = None,
        metrics: GatewayMetrics | None = None,
        admission: InFlightLimit | None = None,
    ) -> None:
        self._served_models = served_models
        self._estimator = estimator
        self._engine = engine
        self._limits = limits
        self._feedback = feedback  # None = finished requests are not reported to the predictor
        self.metrics = metrics if metrics is not None else GatewayMetrics()  # every generation is recorded
        self.admission = admission  # None = no in-flight limit at the gateway

    async def generate(
        self, request: gateway_service_pb2.GenerateRequest, time_remaining_s: TimeRemaining
    ) -> AsyncIterator[GeneratedChunk]:
        """Yields the chunks of one generation; raises AliseError subclasses on failure.

        Records it in the gateway's metrics (the chunks as the client gets them, and how it ended)."""
        recorder = self.metrics.start_request()
        # the request's serialized size: what its prompt weighs while held (cheap: computed in C, no copy)
        admitted = self.admission.admit(request.ByteSize()) if self.admission is not None else contextlib.nullcontext()
        try:
            with admitted:  # RESOURCE_EXHAUSTED at once when the gateway is at an in-flight limit
                async with contextlib.aclosing(self._generate(request, time_remaining_s, recorder)) as chunks:
                    async for chunk in chunks:
                        recorder.on_chunk(len(chunk.token_ids))
                        if chunk.finish is not None:
                            finish = chunk.finish
                            recorder.on_finish(
                                finish.finish_reason, finish.num_prompt_tokens, finish.num_completion_tokens
                            )
                        yield chunk
        except BaseException as error:  # recorded, never swallowed
            recorder.on_error(error)
            raise
        finally:
            recorder.close()

    async def _generate(
        self, request: gateway_service_pb2.GenerateRequest, time_remaining_s: TimeRemaining, recorder: RequestRecorder
    ) -> AsyncIterator[GeneratedChunk]:
        arrival_s = time.monotonic()
        self._engine.check_room()  # overloaded: refused here, before tokenizing, predicting, awaiting
        served = await self._served_models.get()
        resolved = await self._resolve(request, served)
        query = _prediction_query(resolved, served, decode_prompt=self._estimator.has_predictor)
        estimate_started_s = time.monotonic()
        prediction = await self._estimator.estimate(query, time_remaining_s=time_remaining_s())
        recorder.on_estimate(
            prediction.source, time.monotonic() - estimate_started_s, has_predictor=self._estimator.has_predictor
        )
        timeout_s = time_remaining_s()
        if timeout_s is not None and timeout_s <= 0:
            raise DeadlineExceeded("deadline exceeded before the request reached the engine")
        engine_request = build_engine_request(f"gw-{uuid.uuid4().hex}", resolved, prediction)
        assembler = OutputAssembler(resolved, served, prediction, arrival_s)
        stream = self._engine.generate(engine_request, timeout_s=timeout_s)
        async with contextlib.aclosing(stream):
            async for message in stream:
                chunk = assembler.on_engine_message(message)
                if chunk.finish is not None and self._feedback is not None:  # before the yield: the
                    self._feedback.report_finish(  # client may close the stream at it
                        _finished_generation(engine_request.request_id, query, chunk.finish)
                    )
                yield chunk
                if chunk.finish is not None:
                    return  # leaving the block cancels the engine call if it is still running
        raise AliseError(f"engine {self._engine.address} ended the stream without a finish reason")

    async def _resolve(self, request: gateway_service_pb2.GenerateRequest, served: ServedModel) -> ResolvedRequest:
        """Validates and tokenizes; a long text prompt is tokenized off the event loop."""
        resolve = functools.partial(
            resolve_generate_request,
            request,
            served.info,
            served.tokenizer,
            self._limits,
            new_request_id=lambda: f"req-{uuid.uuid4().hex}",
            draw_seed=lambda: secrets.randbits(63),  # 63 bits: also fits a signed int64
        )
        if num_prompt_chars(request) > MAX_INLINE_TOKENIZE_CHARS:
            max_context_tokens = served.info.max_context_tokens  # refused here, before a worker thread sees it
            check_prompt_size(request, max_context_tokens, max_context_tokens * self._limits.max_prompt_bytes_per_token)
            return await asyncio.to_thread(resolve)
        return resolve()


class OutputAssembler:
    """Per-request state between engine messages: detokenizer, stop matcher, counts, timings."""

    def __init__(
        self,
        request: ResolvedRequest,
        served: ServedModel,
        prediction: OutputLengthPrediction,
        arrival_s: float,
    ) -> None:
        self._request = request
        self._prediction = prediction
        self._detokenizer = IncrementalDetokenizer(served.tokenizer, request.prompt_token_ids)
        self._stop_matcher = StopStringMatcher(request.sampling.stop_strings)
        self._arrival_s = arrival_s  # time.monotonic() when the gateway got the request
        self._first_token_s: float | None = None
        self._num_completion_tokens = 0

    def on_engine_message(self, message: engine_service_pb2.EngineServiceGenerateResponse) -> GeneratedChunk:
        """Turns one engine message into one client chunk; a matched stop string ends the generation."""
        token_ids = list(message.token_ids)
        if token_ids and self._first_token_s is None:
            self._first_token_s = time.monotonic()
        self._num_completion_tokens += len(token_ids)
        is_final = message.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
        text_delta = self._detokenizer.add(token_ids)
        if is_final:
            text_delta += self._detokenizer.flush()
        scan = self._scan_stop_strings(text_delta)
        if scan.matched:
            finish = self._summary(FinishReason.STOP, self._gateway_timings())
            return GeneratedChunk(self._request.request_id, token_ids, scan.text, finish)
        if is_final:
            finish = self._summary(finish_reason_from_pb(message.finish_reason), timings_from_pb(message.timings))
            text = scan.text + self._stop_matcher.flush()
            return GeneratedChunk(self._request.request_id, token_ids, text, finish)
        return GeneratedChunk(self._request.request_id, token_ids, scan.text, None)

    def _scan_stop_strings(self, text_delta: str) -> StopScan:
        """Stop strings apply once min_tokens tokens exist (as in vLLM); text before that passes unscanned."""
        if self._num_completion_tokens < self._request.sampling.min_tokens:
            return StopScan(text_delta, matched=False)
        return self._stop_matcher.feed(text_delta)

    def _summary(self, finish_reason: FinishReason, timings: Timings) -> FinishSummary:
        return FinishSummary(
            finish_reason=finish_reason,
            num_prompt_tokens=len(self._request.prompt_token_ids),
            num_completion_tokens=self._num_completion_tokens,
            prediction=self._prediction,
            timings=timings,
        )

    def _gateway_timings(self) -> Timings:
        """Timings as the gateway saw them, used when it ends the call before the engine reports.

        queue_time_s and num_preemptions are only known inside the engine; they are left at 0.
        """
        now_s = time.monotonic()
        first_token_s = self._first_token_s if self._first_token_s is not None else now_s
        return Timings(time_to_first_token_s=first_token_s - self._arrival_s, end_to_end_s=now_s - self._arrival_s)


def _prediction_query(request: ResolvedRequest, served: ServedModel, *, decode_prompt: bool) -> PredictionQuery:
    """The predictor reads text: a token-id prompt is decoded for it (only when a predictor will ask)."""
    prompt_text = request.prompt_text
    if not prompt_text and decode_prompt:
        prompt_text = served.tokenizer.decode(request.prompt_token_ids)
    return PredictionQuery(
        prompt_text=prompt_text,
        num_prompt_tokens=len(request.prompt_token_ids),
        served_model=served.info.model_name,
        max_tokens=request.sampling.max_tokens,
        expected_output_tokens=request.expected_output_tokens,
    )


def _finished_generation(request_id: str, query: PredictionQuery, finish: FinishSummary) -> FinishedGeneration:
    """The feedback report of a finished request (the predictor learns the served model's lengths)."""
    return FinishedGeneration(
        request_id=request_id,
        prompt_text=query.prompt_text,
        num_prompt_tokens=query.num_prompt_tokens,
        num_output_tokens=finish.num_completion_tokens,
        served_model=query.served_model,
        finish_reason=finish.finish_reason,
        max_tokens=query.max_tokens,
        prediction=finish.prediction,
    )
