"""The HTTP API against the real engine (random-weight dummy-llama-tiny on CPU), through the `openai` SDK.

What only a real engine can show: a client that drops its stream gets its KV blocks freed in the
engine, and token counts and finish reasons come from real scheduling.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
import pytest_asyncio

from services.common.contracts import engine_service_pb2, engine_service_pb2_grpc
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine import app as engine_app
from services.engine.config import EngineConfig
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]
NUM_KV_BLOCKS = 120


class Stack:
    def __init__(self, engine, gateway) -> None:
        import grpc

        self.engine, self.gateway = engine, gateway
        self.channel = grpc.aio.insecure_channel(engine.address)
        self.engine_stub = engine_service_pb2_grpc.EngineServiceStub(self.channel)
        self.client = openai.AsyncOpenAI(base_url=f"{gateway.http_url}/v1", api_key="x", max_retries=0, timeout=60)

    async def engine_stats(self):
        return await self.engine_stub.GetStats(engine_service_pb2.EngineServiceGetStatsRequest())


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack():
    engine = await engine_app.start(
        EngineConfig(
            port=0,
            model=DUMMY_TINY_MODEL,
            dtype="float32",
            device="cpu",
            num_kv_blocks=NUM_KV_BLOCKS,
            max_num_seqs=16,
            engine_id="http-engine",
            cpu_threads=1,
            drain_s=0.0,
        )
    )
    gateway = await gateway_app.start(GatewayConfig(engine_address=engine.address, port=0))
    running = Stack(engine, gateway)
    yield running
    await running.client.close()
    await running.channel.close()
    await gateway.stop()
    await engine.stop()


async def test_completion_and_stream_through_the_real_engine(stack):
    model = (await stack.client.models.list()).data[0].id
    completion = await stack.client.completions.create(
        model=model,
        prompt="Write a haiku about the sea.",
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert completion.usage.completion_tokens == 12 and completion.choices[0].finish_reason == "length"
    stream = await stack.client.completions.create(
        model=model,
        prompt="Write a haiku about the sea.",
        max_tokens=12,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    streamed = "".join([chunk.choices[0].text async for chunk in stream])
    assert streamed == completion.choices[0].text  # greedy: the same text either way


async def test_chat_with_a_model_without_chat_template_is_400(stack):
    with pytest.raises(openai.BadRequestError) as raised:
        await stack.client.chat.completions.create(model="", messages=[{"role": "user", "content": "hi"}])
    assert "no chat template" in raised.value.message


async def test_dropped_streams_free_every_kv_block(stack):
    max_tokens, num_streams = 1000, 12
    generated_before = (await stack.engine_stats()).num_generated_tokens

    async def dropped(index: int) -> None:
        stream = await stack.client.completions.create(
            model="",
            prompt="tell me a long story " * (1 + index % 7),
            max_tokens=max_tokens,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        received = 0
        async for _ in stream:
            received += 1
            if received > index % 3:
                break
        await stream.close()

    await asyncio.gather(*(dropped(i) for i in range(num_streams)))
    for _ in range(100):
        stats = await stack.engine_stats()
        if stats.num_kv_blocks_free == NUM_KV_BLOCKS and stats.num_running + stats.num_waiting == 0:
            break
        await asyncio.sleep(0.05)
    assert stats.num_kv_blocks_free == NUM_KV_BLOCKS, stats
    assert stats.num_running + stats.num_waiting == 0
    num_generated = stats.num_generated_tokens - generated_before
    assert num_generated < num_streams * max_tokens / 4, "the dropped requests kept generating"
