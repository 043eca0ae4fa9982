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
from services.predictor.model import LengthDistribution, LengthQuantile, PromptInput  # noqa: E402

PROMPTS = [
    ("Hi!", 3),
    ("Write a Python script that downloads a web page and counts its words.", 16),
    ("Translate 'thank you' into French. Answer with one word.", 14),
    ("Write a detailed essay on the causes of the First World War.", 15),
    ("", 40),  # token count only
]


@pytest.fixture
async def predictor():
    handle = await app.start(PredictorConfig(port=0, max_inputs_per_request=8, max_batch_inputs=64))
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
    for alone, batched in zip(single, together):
        assert alone.predictions[0].quantiles[1].num_tokens == pytest.approx(batched.predictions[0].quantiles[1].num_tokens)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="intra_op_threads"):
        PredictorConfig(intra_op_threads=0)
    with pytest.raises(ValueError, match="max_batch_inputs"):
        PredictorConfig(max_inputs_per_request=300, max_batch_inputs=100)
    config = PredictorConfig.from_args(["--port", "0", "--intra-op-threads", "2", "--cpu-only"])
    assert (config.port, config.intra_op_threads, config.allow_cuda) == (0, 2, False)
    assert config.model_dir == DEFAULT_MODEL_DIR


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
    later = [asyncio.ensure_future(batcher.submit([PromptInput("b", n), PromptInput("c", n + 1)])) for n in (10, 20, 30)]
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
