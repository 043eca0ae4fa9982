"""The gateway reports finished requests to the predictor: batched, in the background, never blocking.

A real gateway (services.gateway.app) talks to the fake engine and a fake predictor that records
ReportFeedback calls, all on 127.0.0.1 port 0 (tests/gateway_fakes.py).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from services.common.contracts import common_pb2, predictor_service_pb2, predictor_service_pb2_grpc
from services.gateway import feedback as feedback_module
from services.gateway.feedback import FeedbackReporter, FinishedGeneration
from services.gateway.finish import FinishReason
from services.gateway.length_prediction import OutputLengthPrediction, PredictionSource
from tests.gateway_fakes import (  # noqa: F401 (stack is a fixture)
    FakePredictor,
    collect,
    stack,
    start_fake_predictor,
    stopped_server_address,
    text_request,
)

pytestmark = pytest.mark.timeout(60)


class RecordingPredictor(FakePredictor):
    """The fake predictor plus ReportFeedback, which records every call's batch."""

    def __init__(self) -> None:
        super().__init__()
        self.feedback_batches: list[list[predictor_service_pb2.FinishedRequest]] = []
        self.feedback_delay_s = 0.0

    async def ReportFeedback(self, request, context):  # noqa: N802
        await asyncio.sleep(self.feedback_delay_s)
        self.feedback_batches.append(list(request.requests))
        return predictor_service_pb2.ReportFeedbackResponse(num_accepted=len(request.requests))

    def reports(self) -> list[predictor_service_pb2.FinishedRequest]:
        return [item for batch in self.feedback_batches for item in batch]


async def _wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_finished_requests_are_reported_in_batches(stack):
    stack.predictor = RecordingPredictor()
    stub = await stack.start(predictor="up")
    prompts = [f"Tell me a story number {index}" for index in range(12)]
    await asyncio.gather(*(collect(stub.Generate(text_request(prompt))) for prompt in prompts))
    stack.engine.finish_reason = common_pb2.FINISH_REASON_LENGTH
    await collect(stub.Generate(text_request("A capped one")))
    stack.engine.finish_reason = common_pb2.FINISH_REASON_ABORTED
    aborted = await collect(stub.Generate(text_request("An aborted one")))
    assert aborted[-1].finish_reason == common_pb2.FINISH_REASON_ABORTED
    await _wait_for(lambda: len(stack.predictor.reports()) >= 13)
    await asyncio.sleep(feedback_module.FLUSH_INTERVAL_S + 0.2)  # nothing else may arrive
    reports = stack.predictor.reports()
    assert len(reports) == 13 and len(stack.predictor.feedback_batches) < 13  # batched, not one call each
    by_prompt = {report.prompt_text: report for report in reports}
    assert set(by_prompt) == set(prompts) | {"A capped one"}  # the aborted one is not reported
    story = by_prompt[prompts[0]]
    assert story.finish_reason == common_pb2.FINISH_REASON_EOS and story.served_model == "fake-llama"
    assert story.num_output_tokens == len(stack.engine.output_ids) and story.num_prompt_tokens > 0
    assert story.prediction.source == common_pb2.PREDICTION_SOURCE_PREDICTOR and story.request_id.startswith("gw-")
    assert story.max_tokens > 0 and story.finished_at_unix_s > 1e9
    assert by_prompt["A capped one"].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert len({report.request_id for report in reports}) == 13


async def test_a_slow_predictor_does_not_slow_requests(stack):
    stack.predictor = RecordingPredictor()
    stack.predictor.feedback_delay_s = 5.0  # every ReportFeedback hangs
    stub = await stack.start(predictor="up")
    started = time.monotonic()
    for index in range(5):
        responses = await collect(stub.Generate(text_request(f"prompt {index}")))
        assert responses[-1].finish_reason == common_pb2.FINISH_REASON_EOS
    await asyncio.sleep(feedback_module.FLUSH_INTERVAL_S + 0.2)  # a report is in flight, hanging
    responses = await collect(stub.Generate(text_request("one more")))
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_EOS
    assert time.monotonic() - started < 4.0


def _finished(index: int) -> FinishedGeneration:
    return FinishedGeneration(
        request_id=f"gw-{index}",
        prompt_text=f"p{index}",
        num_prompt_tokens=3,
        num_output_tokens=7,
        served_model="m",
        finish_reason=FinishReason.EOS,
        max_tokens=16,
        prediction=OutputLengthPrediction(mean_tokens=5.0, source=PredictionSource.FALLBACK),
    )


async def test_overflow_drops_and_counts_and_a_down_predictor_counts_failures():
    predictor = RecordingPredictor()
    server = await start_fake_predictor(predictor)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            reporter = FeedbackReporter(predictor_service_pb2_grpc.PredictorServiceStub(channel), queue_size=2)
            for index in range(5):  # not started: the queue fills
                reporter.report_finish(_finished(index))
            assert (reporter.num_enqueued, reporter.num_dropped) == (2, 3)
            reporter.start()
            await _wait_for(lambda: reporter.num_sent == 2)
            await reporter.close()
        assert [item.request_id for item in predictor.reports()] == ["gw-0", "gw-1"]
    finally:
        await server.stop(0)
    async with grpc.aio.insecure_channel(await stopped_server_address()) as channel:
        reporter = FeedbackReporter(predictor_service_pb2_grpc.PredictorServiceStub(channel), queue_size=8)
        reporter.start()
        for index in range(3):
            reporter.report_finish(_finished(index))
        await _wait_for(lambda: reporter.num_failed == 3)
        await reporter.close()
    assert reporter.num_sent == 0


def test_long_prompts_are_clipped_to_head_and_tail():
    text = "a" * feedback_module.MAX_PROMPT_CHARS + "THE END"
    finished = FinishedGeneration(**{**_finished(0).__dict__, "prompt_text": text})
    clipped = feedback_module.to_finished_request(finished).prompt_text
    assert len(clipped) <= feedback_module.MAX_PROMPT_CHARS + 1 and clipped.endswith("THE END")
