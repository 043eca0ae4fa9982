"""alise.v1.PredictorService in-process on 127.0.0.1 port 0, and its micro-batcher."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

pytest.importorskip("onnxruntime")

from services.common.contracts import common_pb2, predictor_service_pb2, predictor_service_pb2_grpc  # noqa: E402
from services.common.errors import NotReady  # noqa: E402
from services.common.health import is_serving  # noqa: E402
from services.predictor import app  # noqa: E402
from services.predictor.artifact import read_metadata  # noqa: E402
from services.predictor.batcher import MicroBatcher  # noqa: E402
from services.predictor.config import DEFAULT_MODEL_DIR, PredictorConfig  # noqa: E402
from services.predictor.feedback_store import read_feedback  # noqa: E402
from services.predictor.model import LengthDistribution, LengthQuantile, PromptInput  # noqa: E402

PROMPTS = [
    ("Hi!", 3),
    ("Write a Python script that downloads a web page and counts its words.", 16),
    ("Translate 'thank you' into French. Answer with one word.", 14),
    ("Write a detailed essay on the causes of the First World War.", 15),
    ("", 40),  # token count only
]


@pytest.fixture
async def predictor(tmp_path):
    config = PredictorConfig(
        port=0,
        max_inputs_per_request=8,
        max_batch_inputs=64,
        feedback_dir=tmp_path / "feedback",
        live_window_size=100,
        embedding_threads=2,  # 2: batches take the worker-pool path
    )
    handle = await app.start(config)
    async with grpc.aio.insecure_channel(handle.address) as channel:
        yield handle, predictor_service_pb2_grpc.PredictorServiceStub(channel)
    await handle.stop(0.0)


def _request(prompts) -> predictor_service_pb2.PredictOutputLengthRequest:
    return predictor_service_pb2.PredictOutputLengthRequest(
        inputs=[predictor_service_pb2.PredictionInput(prompt_text=text, num_prompt_tokens=n) for text, n in prompts]
    )


async def test_batch_gets_monotone_predictions_with_model_version(predictor):
    handle, stub = predictor
    assert await is_serving(handle.address, service="alise.v1.PredictorService")
    response = await stub.PredictOutputLength(_request(PROMPTS), timeout=10)
    version = read_metadata(DEFAULT_MODEL_DIR).model_version
    assert response.model_version == version
    assert len(response.predictions) == len(PROMPTS)
    for prediction in response.predictions:
        assert prediction.model_version == version
        assert prediction.source == common_pb2.PREDICTION_SOURCE_PREDICTOR
        assert [round(q.level, 3) for q in prediction.quantiles] == [0.1, 0.5, 0.9]
        values = [q.num_tokens for q in prediction.quantiles]
        assert values == sorted(values) and values[0] >= 1.0
        assert prediction.mean_tokens >= 1.0


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ([], "inputs must not be empty"),
        ([("hello", 2)] * 9, "at most 8 inputs per request, got 9"),
        ([("hello", 2), ("", 0)], "inputs[1]: prompt_text is empty and num_prompt_tokens is 0"),
    ],
)
async def test_bad_requests_are_invalid_argument(predictor, prompts, message):
    _, stub = predictor
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.PredictOutputLength(_request(prompts), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()


async def test_concurrent_calls_each_get_their_own_answers(predictor):
    _, stub = predictor
    single = [await stub.PredictOutputLength(_request([prompt]), timeout=10) for prompt in PROMPTS]
    together = await asyncio.gather(*(stub.PredictOutputLength(_request([p]), timeout=10) for p in PROMPTS))
    for alone, batched in zip(single, together):  # batch mates never change a prompt's embedding
        assert alone.predictions[0].quantiles[1].num_tokens == pytest.approx(
            batched.predictions[0].quantiles[1].num_tokens
        )


def _finished(index: int, *, actual: int, p50: float, finish=common_pb2.FINISH_REASON_EOS, ours=True):
    source = common_pb2.PREDICTION_SOURCE_PREDICTOR if ours else common_pb2.PREDICTION_SOURCE_FALLBACK
    prediction = common_pb2.OutputLengthPrediction(
        mean_tokens=p50,
        source=source,
        model_version="m1",
        quantiles=[
            common_pb2.LengthQuantile(level=level, num_tokens=p50 * factor)
            for level, factor in ((0.1, 0.5), (0.5, 1.0), (0.9, 2.0))
        ],
    )
    return predictor_service_pb2.FinishedRequest(
        request_id=f"gw-{index}",
        prompt_text=f"prompt {index}",
        num_prompt_tokens=5,
        num_output_tokens=actual,
        served_model="tiny",
        finish_reason=finish,
        max_tokens=512,
        prediction=prediction,
        finished_at_unix_s=1e9,
    )


async def test_feedback_is_stored_and_scored_in_stats(predictor, tmp_path):
    handle, stub = predictor
    reports = [_finished(i, actual=10 * (i + 1), p50=10.0 * (i + 1) + 5) for i in range(20)]
    reports += [_finished(20, actual=300, p50=1.0, finish=common_pb2.FINISH_REASON_LENGTH)]  # censored: not scored
    reports += [_finished(21, actual=300, p50=1.0, ours=False)]  # a fallback estimate: not scored
    reports += [_finished(22, actual=7, p50=7.0, finish=common_pb2.FINISH_REASON_ABORTED)]  # ignored
    reply = await stub.ReportFeedback(predictor_service_pb2.ReportFeedbackRequest(requests=reports), timeout=10)
    assert (reply.num_accepted, reply.num_ignored) == (22, 1)
    await stub.PredictOutputLength(_request(PROMPTS[:2]), timeout=10)
    stats = await stub.GetStats(predictor_service_pb2.PredictorServiceGetStatsRequest(), timeout=10)
    assert stats.model_version == read_metadata(DEFAULT_MODEL_DIR).model_version
    assert stats.num_predictions == 2 and stats.num_batches >= 1 and "CPUExecutionProvider" in stats.execution_providers
    assert (stats.num_feedback_accepted, stats.num_feedback_censored) == (22, 1)
    assert (stats.live.num_requests, stats.live.window_size) == (20, 100)
    assert stats.live.kendall_tau == pytest.approx(1.0) and stats.live.mae_tokens == pytest.approx(5.0)
    assert stats.live.coverage_p90 == pytest.approx(1.0)
    stored = list(read_feedback(tmp_path / "feedback"))
    assert len(stored) == 22 and sum(record.censored for record in stored) == 1
    assert stored[0].prompt_text == "prompt 0" and stored[0].predicted_p50_tokens == pytest.approx(15.0)
    assert stored[21].predicted_p50_tokens is None  # the fallback one


async def test_bad_feedback_is_invalid_argument(predictor):
    _, stub = predictor
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ReportFeedback(predictor_service_pb2.ReportFeedbackRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "must not be empty" in raised.value.details()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="intra_op_threads"):
        PredictorConfig(intra_op_threads=0)
    with pytest.raises(ValueError, match="max_batch_inputs"):
        PredictorConfig(max_inputs_per_request=300, max_batch_inputs=100)
    with pytest.raises(ValueError, match="live_window_size"):
        PredictorConfig(live_window_size=1)
    config = PredictorConfig.from_args(["--port", "0", "--intra-op-threads", "2", "--cpu-only", "--feedback-dir", "fb"])
    assert (config.port, config.intra_op_threads, config.allow_cuda) == (0, 2, False)
    assert config.model_dir == DEFAULT_MODEL_DIR and str(config.feedback_dir) == "fb"


def _fake_distribution(item: PromptInput) -> LengthDistribution:
    tokens = float(item.num_prompt_tokens)
    return LengthDistribution(tokens, (LengthQuantile(0.5, tokens),), "fake")


async def test_batcher_merges_requests_that_wait_behind_a_running_batch():
    release = threading.Event()
    batch_sizes: list[int] = []

    def predict(inputs):
        batch_sizes.append(len(inputs))
        release.wait(timeout=10)
        return [_fake_distribution(item) for item in inputs]

    batcher = MicroBatcher(predict, max_batch_inputs=100)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit([PromptInput("a", 1)]))
    while not batch_sizes:  # the first batch is running (and blocked)
        await asyncio.sleep(0.001)
    later = [
        asyncio.ensure_future(batcher.submit([PromptInput("b", n), PromptInput("c", n + 1)])) for n in (10, 20, 30)
    ]
    await asyncio.sleep(0.05)
    release.set()
    assert [d.mean_tokens for d in await first] == [1.0]
    results = await asyncio.gather(*later)
    assert [[d.mean_tokens for d in result] for result in results] == [[10, 11], [20, 21], [30, 31]]
    assert batch_sizes == [1, 6] and batcher.num_batches == 2
    await batcher.close()
    with pytest.raises(NotReady):
        await batcher.submit([PromptInput("d", 1)])


async def test_batcher_failure_reaches_only_that_batch():
    calls = []

    def predict(inputs):
        calls.append(len(inputs))
        if len(calls) == 1:
            raise RuntimeError("broken model")
        return [_fake_distribution(item) for item in inputs]

    batcher = MicroBatcher(predict, max_batch_inputs=10)
    batcher.start()
    with pytest.raises(RuntimeError, match="broken model"):
        await batcher.submit([PromptInput("a", 1)])
    assert [d.mean_tokens for d in await batcher.submit([PromptInput("b", 2)])] == [2.0]
    await batcher.close()


async def test_batcher_never_exceeds_max_batch_inputs():
    batch_sizes: list[int] = []

    def predict(inputs):
        batch_sizes.append(len(inputs))
        return [_fake_distribution(item) for item in inputs]

    batcher = MicroBatcher(predict, max_batch_inputs=4)
    batcher.start()
    requests = [[PromptInput("x", n)] * 3 for n in range(1, 5)]  # 4 requests x 3 prompts
    results = await asyncio.gather(*(batcher.submit(request) for request in requests))
    assert [[d.mean_tokens for d in result] for result in results] == [[n] * 3 for n in range(1, 5)]
    assert max(batch_sizes) <= 4 and sum(batch_sizes) == 12
    await batcher.close()
