"""The per-request speculative-decoding opt-out travels from gRPC and OpenAI HTTP clients to the engine."""

from __future__ import annotations

import httpx2
import pytest

from services.common.contracts import common_pb2
from tests.gateway_fakes import collect, stack, text_request  # noqa: F401 (stack is a fixture)

pytestmark = pytest.mark.timeout(60)


async def test_speculative_opt_out_reaches_the_engine_from_grpc_and_http(stack):
    stub = await stack.start()
    await collect(stub.Generate(text_request(sampling=common_pb2.SamplingParams(max_tokens=4)), timeout=10))
    opted_out = common_pb2.SamplingParams(max_tokens=4, speculative=False)
    await collect(stub.Generate(text_request(sampling=opted_out), timeout=10))
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=10) as client:
        body = {"prompt": "hi", "max_tokens": 4}
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        assert (await client.post("/v1/completions", json=body | {"speculative": False})).status_code == 200
        refused = await client.post("/v1/completions", json=body | {"speculative": "sometimes"})
        assert refused.status_code == 400
    assert [request.sampling.speculative for request in stack.engine.requests] == [True, False, True, False]
