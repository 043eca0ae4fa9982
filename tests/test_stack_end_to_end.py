"""The four real services in-process on loopback (OS-chosen ports), driven through the gateway."""

import asyncio
import random

import grpc
import pytest
import pytest_asyncio

from services.common.contracts import (
    common_pb2,
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    memory_service_pb2,
    memory_service_pb2_grpc,
)
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine import app as engine_app
from services.engine.config import EngineConfig
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig
from services.memory import app as memory_app
from services.memory.config import MemoryConfig
from services.predictor import app as predictor_app
from services.predictor.config import PredictorConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")
NUM_KV_BLOCKS = 200


class Stack:
    """Stubs of the running services."""

    def __init__(self, handles) -> None:
        self.handles = handles
        self.channels = {name: grpc.aio.insecure_channel(h.address) for name, h in handles.items()}
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self.channels["gateway"])
        self.engine = engine_service_pb2_grpc.EngineServiceStub(self.channels["engine"])
        self.memory = memory_service_pb2_grpc.MemoryServiceStub(self.channels["memory"])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for name in ("gateway", "engine", "predictor", "memory"):
            await self.handles[name].stop()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack():
    memory = await memory_app.start(MemoryConfig(port=0, report_interval_s=0.2, stale_after_s=5.0))
    predictor = await predictor_app.start(PredictorConfig(port=0))
    engine = await engine_app.start(
        EngineConfig(
            port=0,
            model=DUMMY_TINY_MODEL,
            dtype="float32",
            device="cpu",
            num_kv_blocks=NUM_KV_BLOCKS,
            max_num_seqs=16,
            memory_address=memory.address,
            engine_id="e2e-engine",
            cpu_threads=1,
            drain_s=0.0,
        )
    )
    gateway = await gateway_app.start(
        GatewayConfig(
            engine_address=engine.address, predictor_address=predictor.address, port=0, predictor_timeout_ms=500
        )
    )
    running = Stack({"memory": memory, "predictor": predictor, "engine": engine, "gateway": gateway})
    yield running
    await running.close()


def text_request(prompt: str, max_tokens: int = 16, **fields) -> gateway_service_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return gateway_service_pb2.GenerateRequest(prompt_text=prompt, sampling=sampling, **fields)


async def test_text_generation_streams_through_all_four_services(stack):
    responses = [r async for r in stack.gateway.Generate(text_request("Write a haiku about the sea.", request_id="c1"))]
    assert all(r.request_id == "c1" for r in responses)
    assert sum(len(r.token_ids) for r in responses) == 16
    final = responses[-1]
    assert final.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 16 and final.usage.prompt_tokens > 5
    assert final.prediction.source == common_pb2.PREDICTION_SOURCE_PREDICTOR
    assert final.prediction.model_version and final.prediction.mean_tokens > 0
    assert final.timings.time_to_first_token_s > 0
    assert "".join(r.text for r in responses)  # the dummy model's text is gibberish, but it is text


async def test_model_info_comes_from_the_engine(stack):
    info = await stack.gateway.GetModelInfo(gateway_service_pb2.GetModelInfoRequest())
    assert (info.model_name, info.vocab_size, info.max_context_tokens) == ("dummy-llama-tiny", 32000, 2048)


async def test_bad_input_through_the_stack_is_invalid_argument(stack):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.gateway.Generate(text_request("hi", max_tokens=5000)).read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context" in caught.value.details()


async def test_engine_registers_with_memory_and_reports_usage(stack):
    for _ in range(50):
        stats = await stack.memory.GetStats(memory_service_pb2.MemoryServiceGetStatsRequest())
        if any(e.engine_id == "e2e-engine" for e in stats.engines):
            break
        await asyncio.sleep(0.1)
    engine = next(e for e in stats.engines if e.engine_id == "e2e-engine")
    assert engine.device.num_blocks_total == NUM_KV_BLOCKS
    assert engine.layout.num_layers == 4 and engine.layout.block_bytes > 0
    assert stats.ledger_consistent


async def test_client_cancellation_through_the_gateway_frees_engine_kv_blocks(stack):
    rng = random.Random(3)

    async def cancelled(index: int) -> None:
        call = stack.gateway.Generate(text_request("tell me a long story " * rng.randrange(1, 20), max_tokens=300))
        for _ in range(rng.randrange(0, 4)):
            await call.read()
        call.cancel()

    await asyncio.gather(*(cancelled(i) for i in range(30)))
    for _ in range(100):
        stats = await stack.engine.GetStats(engine_service_pb2.EngineServiceGetStatsRequest())
        if stats.num_kv_blocks_free == NUM_KV_BLOCKS and stats.num_running + stats.num_waiting == 0:
            break
        await asyncio.sleep(0.05)
    assert stats.num_kv_blocks_free == NUM_KV_BLOCKS, stats
