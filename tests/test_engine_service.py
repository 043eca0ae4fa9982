"""The engine as a gRPC service on loopback: streaming, validation, abort, stats, cancellation."""

import asyncio
import random

import grpc
import pytest
import pytest_asyncio

from services.common.contracts import common_pb2, engine_service_pb2, engine_service_pb2_grpc
from services.engine.app import start
from services.engine.config import EngineConfig
from services.engine.servicer import EngineServicer, ServedModelInfo
from tests.engine_configs import tiny_engine_config

pytestmark = pytest.mark.asyncio(loop_scope="module")
NUM_KV_BLOCKS = 100  # 1,600 token positions: less than the 2,048-token context
BLOCK_SIZE = 16


def engine_config(**overrides) -> EngineConfig:
    fields = dict(
        engine_id="test-engine",
        block_size_tokens=BLOCK_SIZE,
        num_kv_blocks=NUM_KV_BLOCKS,
        max_num_seqs=16,
        max_waiting_requests=512,
    )
    return tiny_engine_config(**{**fields, **overrides})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine():
    handle = await start(engine_config())
    channel = grpc.aio.insecure_channel(handle.address)
    yield engine_service_pb2_grpc.EngineServiceStub(channel)
    await channel.close()
    await handle.stop()


def generate_request(request_id: str, prompt=(1, 415, 2936, 9060), max_tokens: int = 8, **sampling):
    params = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **sampling)
    return engine_service_pb2.EngineServiceGenerateRequest(
        request_id=request_id, prompt_token_ids=list(prompt), sampling=params
    )


async def collect(stub, request):
    return [response async for response in stub.Generate(request)]


async def test_stream_carries_all_tokens_and_a_final_summary(engine):
    responses = await collect(engine, generate_request("stream-1", max_tokens=12))
    tokens = [t for r in responses for t in r.token_ids]
    assert len(tokens) == 12
    final = responses[-1]
    assert final.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert all(r.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
    assert 0 <= final.timings.queue_time_s <= final.timings.time_to_first_token_s <= final.timings.end_to_end_s


@pytest.mark.parametrize(
    "request_id, prompt, max_tokens, code, message",
    [
        ("v1", (), 4, grpc.StatusCode.INVALID_ARGUMENT, "prompt_token_ids is empty"),
        ("v2", (1, 32000), 4, grpc.StatusCode.INVALID_ARGUMENT, "outside the vocabulary"),
        ("v3", (1, 2), 0, grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
        ("v4", (1,) * 2000, 100, grpc.StatusCode.INVALID_ARGUMENT, "exceeds the model context"),
        ("v5", (1,) * 1000, 1000, grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the whole KV cache"),
        ("", (1, 2), 4, grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ],
)
async def test_bad_requests_get_clear_statuses(engine, request_id, prompt, max_tokens, code, message):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(engine, generate_request(request_id, prompt, max_tokens))
    assert caught.value.code() == code
    assert message in caught.value.details()


async def test_bad_sampling_values_are_invalid_argument(engine):
    for sampling in (dict(top_p=1.5), dict(top_k=-1), dict(temperature=float("nan"))):
        request = generate_request("bad-sampling", **{k: v for k, v in sampling.items() if k != "temperature"})
        if "temperature" in sampling:
            request.sampling.temperature = sampling["temperature"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await collect(engine, request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, sampling


async def test_a_malformed_prediction_is_invalid_argument_and_a_good_one_is_used(engine):
    bad = generate_request("bad-prediction")
    bad.prediction.mean_tokens = 20.0
    bad.prediction.quantiles.add(level=1.5, num_tokens=10.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(engine, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prediction" in caught.value.details()
    good = generate_request("good-prediction", max_tokens=5)
    good.prediction.mean_tokens = 20.0
    for level, tokens in ((0.1, 5.0), (0.5, 15.0), (0.9, 40.0)):
        good.prediction.quantiles.add(level=level, num_tokens=tokens)
    tokens = [t for r in await collect(engine, good) for t in r.token_ids]
    assert len(tokens) == 5


async def test_duplicate_live_request_id_is_already_exists(engine):
    first = engine.Generate(generate_request("dup", max_tokens=200))
    await first.read()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(engine, generate_request("dup"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    first.cancel()


async def test_abort_ends_the_stream_as_aborted(engine):
    call = engine.Generate(generate_request("to-abort", max_tokens=500))
    await call.read()
    reply = await engine.Abort(engine_service_pb2.AbortRequest(request_id="to-abort"))
    assert reply.found
    rest = []
    while (response := await call.read()) is not grpc.aio.EOF:
        rest.append(response)
    assert rest[-1].finish_reason == common_pb2.FINISH_REASON_ABORTED
    assert not (await engine.Abort(engine_service_pb2.AbortRequest(request_id="to-abort"))).found


async def test_model_info_and_stats(engine):
    info = await engine.GetModelInfo(engine_service_pb2.EngineServiceGetModelInfoRequest())
    assert (info.vocab_size, info.max_context_tokens, info.eos_token_id, info.tokenizer) == (32000, 2048, 2, "default")
    assert info.HasField("eos_token_id")
    stats = await engine.GetStats(engine_service_pb2.EngineServiceGetStatsRequest())
    assert stats.num_kv_blocks_total == NUM_KV_BLOCKS and stats.scheduler_policy == "alise"
    assert stats.num_kv_blocks_used + stats.num_kv_blocks_free == NUM_KV_BLOCKS


async def _wait_for_free_blocks(engine, timeout_s: float = 10.0):
    stats = None
    for _ in range(int(timeout_s / 0.05)):
        stats = await engine.GetStats(engine_service_pb2.EngineServiceGetStatsRequest())
        if stats.num_kv_blocks_free == NUM_KV_BLOCKS and stats.num_running + stats.num_waiting == 0:
            return stats
        await asyncio.sleep(0.05)
    return stats


async def test_200_streams_cancelled_at_random_points_free_every_kv_block(engine):
    rng = random.Random(7)
    before = await _wait_for_free_blocks(engine)
    assert before.num_kv_blocks_free == NUM_KV_BLOCKS

    async def cancelled_stream(index: int) -> None:
        prompt = [1] + [rng.randrange(3, 32000) for _ in range(rng.randrange(1, 120))]
        call = engine.Generate(generate_request(f"cancel-{index}", prompt, max_tokens=400))
        for _ in range(rng.randrange(0, 6)):  # cancel before the first token, or after a few
            await call.read()
        call.cancel()

    for wave in range(10):
        await asyncio.gather(*(cancelled_stream(wave * 20 + i) for i in range(20)))
    after = await _wait_for_free_blocks(engine)
    assert after.num_kv_blocks_free == NUM_KV_BLOCKS, after
    assert after.num_running == after.num_waiting == 0


async def test_model_info_of_a_model_without_eos_leaves_the_field_unset():
    info = ServedModelInfo("no-eos", "default", max_model_len=128, vocab_size=1000, eos_token_id=None)
    reply = await EngineServicer(None, info, max_live_requests=1).GetModelInfo(
        engine_service_pb2.EngineServiceGetModelInfoRequest(), None
    )
    assert not reply.HasField("eos_token_id") and reply.vocab_size == 1000  # 0 would be a real token id
