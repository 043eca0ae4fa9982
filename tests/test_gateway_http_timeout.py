"""HTTP deadlines: the gateway's default (--http-request-timeout-s) and a request's own `timeout` field
become the engine call's gRPC deadline; expiry is a 504 with an OpenAI-shaped error (mid-stream: an
error event, then the stream ends without [DONE]) and the engine frees the request's KV blocks.
"""

from __future__ import annotations

import asyncio
import json

import httpx2
import openai
import pytest

from services.common.contracts import engine_service_pb2, engine_service_pb2_grpc
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine import app as engine_app
from services.engine.config import EngineConfig
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig
from tests.gateway_fakes import stack  # noqa: F401 (stack is a fixture)

pytestmark = pytest.mark.timeout(120)
NUM_KV_BLOCKS = 200
# ~10 s of tiny-model decode; the hint of 1 output token keeps deadline-aware admission from refusing it up
# front (429), so the deadline expires while the engine runs it
LONG = {"prompt": "Tell me a long story", "max_tokens": 1900, "ignore_eos": True, "expected_output_tokens": 1}


async def test_the_default_and_a_requests_timeout_become_the_engine_deadline(stack):
    await stack.start(http_request_timeout_s=42.0)
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=10) as client:
        assert (await client.post("/v1/completions", json={"prompt": "hi"})).status_code == 200
        assert (await client.post("/v1/completions", json={"prompt": "hi", "timeout": 7.5})).status_code == 200
        for bad in (0, -1):
            refused = await client.post("/v1/completions", json={"prompt": "hi", "timeout": bad})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "timeout"
    default_s, override_s = stack.engine.time_remaining_s
    assert 41.0 < default_s <= 42.1 and 6.5 < override_s <= 7.6  # gRPC rounds a timeout up a little
    with pytest.raises(ValueError, match="http_request_timeout_s must be > 0"):
        GatewayConfig(engine_address="127.0.0.1:1", http_request_timeout_s=0)
    assert GatewayConfig.from_args(["--engine-address", "127.0.0.1:1"]).http_request_timeout_s == 600.0


@pytest.fixture
async def real_stack():
    engine = await engine_app.start(
        EngineConfig(
            port=0,
            model=DUMMY_TINY_MODEL,
            dtype="float32",
            device="cpu",
            num_kv_blocks=NUM_KV_BLOCKS,
            cpu_threads=1,
            drain_s=0.0,
            metrics_port=None,
            engine_id="timeout-engine",
        )
    )
    gateway = await gateway_app.start(GatewayConfig(engine_address=engine.address, port=0, http_request_timeout_s=0.6))
    import grpc

    channel = grpc.aio.insecure_channel(engine.address)
    stub = engine_service_pb2_grpc.EngineServiceStub(channel)
    yield gateway, stub
    await channel.close()
    await gateway.stop(0)
    await engine.stop(0)


async def _kv_blocks_all_free(stub) -> engine_service_pb2.EngineServiceGetStatsResponse:
    for _ in range(100):
        stats = await stub.GetStats(engine_service_pb2.EngineServiceGetStatsRequest(), timeout=5)
        if stats.num_kv_blocks_free == NUM_KV_BLOCKS and stats.num_running + stats.num_waiting == 0:
            break
        await asyncio.sleep(0.05)
    return stats


async def test_expiry_is_504_and_frees_the_kv_in_the_engine(real_stack):
    gateway, engine_stub = real_stack
    async with openai.AsyncOpenAI(base_url=f"{gateway.http_url}/v1", api_key="x", max_retries=0, timeout=30) as client:
        with pytest.raises(openai.APIStatusError) as raised:  # the gateway's default: 0.6 s
            await client.completions.create(
                model="",
                prompt=LONG["prompt"],
                max_tokens=LONG["max_tokens"],
                extra_body={"ignore_eos": True, "expected_output_tokens": 1},
            )
        assert raised.value.status_code == 504
        assert raised.value.body["type"] == "timeout_error" and "deadline exceeded" in raised.value.body["message"]
        completion = await client.completions.create(  # a request's own longer timeout wins
            model="", prompt="hi", max_tokens=40, extra_body={"ignore_eos": True, "timeout": 60}
        )
        assert completion.usage.completion_tokens == 40
    stats = await _kv_blocks_all_free(engine_stub)
    assert stats.num_kv_blocks_free == NUM_KV_BLOCKS and stats.num_running + stats.num_waiting == 0


async def test_a_stream_past_its_deadline_ends_with_an_error_event(real_stack):
    gateway, engine_stub = real_stack
    events = []
    async with httpx2.AsyncClient(base_url=gateway.http_url, timeout=30) as client:
        body = {**LONG, "stream": True, "timeout": 1.0}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
    assert events[-1] != "[DONE]" and len(events) > 1, events[-3:]
    error = json.loads(events[-1])["error"]
    assert error["type"] == "timeout_error" and set(error) == {"message", "type", "param", "code"}
    stats = await _kv_blocks_all_free(engine_stub)
    assert stats.num_kv_blocks_free == NUM_KV_BLOCKS and stats.num_running + stats.num_waiting == 0
