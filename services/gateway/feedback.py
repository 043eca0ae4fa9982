"""Reports finished requests to the predictor in the background, batched, never on the hot path.

The predictor learns the served model's real lengths from these reports (live accuracy in its
stats, and `alise predictor train --from-feedback`). Reporting must never slow or fail a request:

    generation finishes --report_finish()--> bounded queue --(every FLUSH_INTERVAL_S or full batch)-->
        one ReportFeedback call with up to MAX_BATCH_REQUESTS finished requests

- `report_finish` only enqueues (put_nowait): no await, no I/O, O(1) per request, never per token.
- The queue is bounded: when the predictor is slow or down and it fills, new reports are dropped
  and counted (`num_dropped`), so memory stays bounded.
- A failed call drops its batch (counted in `num_failed`); there is no retry loop to pile up.

Which requests are reported: those that finished by EOS, a stop string or LENGTH. LENGTH ones go
out with their finish reason, and the predictor stores them as censored (the true length is at
least the number generated) and leaves them out of live accuracy and, by default, of training; they
are sent anyway because a workload that sets max_tokens to the known length (the vLLM-style
benchmarks with ignore_eos) is exactly the case where the cap is the length. Aborted requests (client
cancel, deadline) are not reported: their length says nothing about the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.contracts import predictor_service_pb2
from services.common.errors import AliseError
from services.gateway.finish import FinishReason
from services.gateway.finish_pb import finish_reason_to_pb
from services.gateway.length_prediction import OutputLengthPrediction
from services.gateway.length_prediction_pb import prediction_to_pb

log = logging.getLogger(__name__)

REPORTED_FINISH_REASONS = frozenset({FinishReason.EOS, FinishReason.STOP, FinishReason.LENGTH})
MAX_BATCH_REQUESTS = 256  # finished requests per ReportFeedback call
FLUSH_INTERVAL_S = 0.5  # a report waits at most about this long before it is sent
CALL_TIMEOUT_S = 2.0  # deadline of one ReportFeedback call
CLOSE_FLUSH_TIMEOUT_S = 1.0  # on shutdown, how long the last flush may take
MAX_PROMPT_CHARS = 32_768  # longer prompts are sent as their first and last half of this


@dataclass(frozen=True)
class FinishedGeneration:
    """What the generation pipeline knows when a request ends (the hook's argument)."""

    request_id: str  # gateway request id (the engine's)
    prompt_text: str  # the prompt as text ("" when it came as ids and was not decoded)
    num_prompt_tokens: int  # prompt length in the served model's tokens
    num_output_tokens: int  # tokens generated
    served_model: str  # model name
    finish_reason: FinishReason
    max_tokens: int  # resolved max_tokens of the request
    prediction: OutputLengthPrediction  # the estimate it was scheduled with


def _clipped_prompt(text: str) -> str:
    if len(text) <= MAX_PROMPT_CHARS:
        return text
    half = MAX_PROMPT_CHARS // 2
    return text[:half] + "\n" + text[-half:]


def to_finished_request(finished: FinishedGeneration) -> predictor_service_pb2.FinishedRequest:
    """The wire form of one finished generation."""
    return predictor_service_pb2.FinishedRequest(
        request_id=finished.request_id,
        prompt_text=_clipped_prompt(finished.prompt_text),
        num_prompt_tokens=finished.num_prompt_tokens,
        num_output_tokens=finished.num_output_tokens,
        served_model=finished.served_model,
        finish_reason=finish_reason_to_pb(finished.finish_reason),
        max_tokens=finished.max_tokens,
        prediction=prediction_to_pb(finished.prediction),
        finished_at_unix_s=time.time(),
    )


class FeedbackReporter:
    """Bounded queue + one background task sending batches; counters for monitoring and tests."""

    def __init__(self, stub: Any, *, queue_size: int) -> None:
        """stub: a PredictorServiceStub (or the gateway's balanced look-alike over replicas)."""
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self._stub = stub
        self._queue: asyncio.Queue[predictor_service_pb2.FinishedRequest] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._in_hand: list[predictor_service_pb2.FinishedRequest] = []  # taken from the queue, not sent yet
        self.num_enqueued = 0  # reports accepted into the queue
        self.num_dropped = 0  # reports dropped because the queue was full
        self.num_sent = 0  # reports the predictor acknowledged
        self.num_failed = 0  # reports lost with a failed call

    def start(self) -> None:
        """Starts the sender task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="gateway-feedback")

    def report_finish(self, finished: FinishedGeneration) -> None:
        """Enqueues one report if its finish reason is reported; never blocks, never raises."""
        if finished.finish_reason not in REPORTED_FINISH_REASONS or finished.num_output_tokens <= 0:
            return
        try:
            self._queue.put_nowait(to_finished_request(finished))
        except asyncio.QueueFull:
            self.num_dropped += 1
            return
        self.num_enqueued += 1

    def _drain(self) -> list[predictor_service_pb2.FinishedRequest]:
        batch = []
        while len(batch) < MAX_BATCH_REQUESTS and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _send(self, batch: list[predictor_service_pb2.FinishedRequest], timeout_s: float) -> None:
        request = predictor_service_pb2.ReportFeedbackRequest(requests=batch)
        try:
            await self._stub.ReportFeedback(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            self.num_failed += len(batch)
            log.debug("feedback batch of %d dropped (%s: %s)", len(batch), error.code().name, error.details())
            return
        except AliseError as error:  # e.g. NotReady: no predictor replica is serving
            self.num_failed += len(batch)
            log.debug("feedback batch of %d dropped (%s)", len(batch), error)
            return
        self.num_sent += len(batch)

    async def _run(self) -> None:
        while True:
            self._in_hand = [await self._queue.get()]
            if self._queue.qsize() < MAX_BATCH_REQUESTS - 1:
                await asyncio.sleep(FLUSH_INTERVAL_S)  # let a batch gather
            self._in_hand += self._drain()
            await self._send(self._in_hand, CALL_TIMEOUT_S)
            self._in_hand = []

    async def close(self) -> None:
        """Stops the sender, then sends what is still queued within CLOSE_FLUSH_TIMEOUT_S in all."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + CLOSE_FLUSH_TIMEOUT_S
        batch, self._in_hand = self._in_hand + self._drain(), []
        while batch:
            time_left_s = deadline_s - loop.time()
            if time_left_s <= 0:
                self.num_failed += len(batch) + self._queue.qsize()
                return
            await self._send(batch, time_left_s)
            batch = self._drain()
