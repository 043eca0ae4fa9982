"""Micro-batching: concurrent PredictOutputLength calls share one ONNX Runtime call.

ONNX Runtime calls block, so they run in a worker thread (the event loop keeps serving). One
worker task drains the queue: it takes every request waiting at that moment (up to
max_batch_inputs prompts), runs them as one batch, and hands each caller its slice. No timer: at
low load a request runs at once (batch of one); under load, requests that arrive while a batch
runs form the next batch, so batching grows exactly when it pays.

    callers ──submit()──> pending: [r1 r2 r3 | r4 ...]     worker: take r1..r3 (<= max inputs)
                                                             └─ to_thread(predict(r1+r2+r3))
                                                             └─ r1 <- out[0:n1], r2 <- ...

Invariants: at most one batch runs at a time; results keep each request's input order; a caller
that went away (cancelled future) is skipped, not computed; after `close`, submit raises NotReady.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

from services.common.errors import NotReady
from services.predictor.model import LengthDistribution, PromptInput

log = logging.getLogger(__name__)

PredictFn = Callable[[Sequence[PromptInput]], list[LengthDistribution]]


@dataclass
class _Pending:
    inputs: Sequence[PromptInput]  # one request's prompts
    result: asyncio.Future  # resolves to list[LengthDistribution], one per input


class MicroBatcher:
    """Runs `predict` on merged batches of concurrently submitted requests."""

    def __init__(self, predict: PredictFn, *, max_batch_inputs: int) -> None:
        if max_batch_inputs < 1:
            raise ValueError(f"max_batch_inputs must be >= 1, got {max_batch_inputs}")
        self._predict = predict
        self._max_batch_inputs = max_batch_inputs
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._closed = False
        self.num_batches = 0  # batches run so far (for tests and metrics)
        self.num_inputs = 0  # prompts predicted so far

    def start(self) -> None:
        """Starts the worker task on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="predictor-batcher")

    async def submit(self, inputs: Sequence[PromptInput]) -> list[LengthDistribution]:
        """Predictions for inputs, in order, computed in some batch with other callers' inputs."""
        if self._closed or self._worker is None:
            raise NotReady("predictor is not running (starting or shutting down)")
        pending = _Pending(inputs, asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        self._wakeup.set()
        return await pending.result

    def _take_batch(self) -> list[_Pending]:
        """Live requests from the queue head, up to max_batch_inputs prompts (at least one request)."""
        batch: list[_Pending] = []
        num_inputs = 0
        while self._pending:
            head = self._pending[0]
            if head.result.done():  # caller cancelled: drop it
                self._pending.popleft()
                continue
            if batch and num_inputs + len(head.inputs) > self._max_batch_inputs:
                break
            batch.append(self._pending.popleft())
            num_inputs += len(head.inputs)
        return batch

    async def _run_batch(self, batch: list[_Pending]) -> None:
        flat = [item for pending in batch for item in pending.inputs]
        try:
            outputs = await asyncio.to_thread(self._predict, flat)
        except asyncio.CancelledError:  # close() during a batch: nobody may wait forever
            _fail(batch, NotReady("predictor is shutting down"))
            raise
        except Exception as error:  # a bug or a broken model: fail these callers, keep serving
            log.exception("prediction batch of %d inputs failed", len(flat))
            _fail(batch, error)
            return
        self.num_batches += 1
        self.num_inputs += len(flat)
        offset = 0
        for pending in batch:
            count = len(pending.inputs)
            if not pending.result.done():
                pending.result.set_result(outputs[offset : offset + count])
            offset += count

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while batch := self._take_batch():
                await self._run_batch(batch)

    async def close(self) -> None:
        """Stops the worker; callers still waiting get NotReady."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        _fail(list(self._pending), NotReady("predictor is shutting down"))
        self._pending.clear()


def _fail(batch: Sequence[_Pending], error: BaseException) -> None:
    for pending in batch:
        if not pending.result.done():
            pending.result.set_exception(error)
