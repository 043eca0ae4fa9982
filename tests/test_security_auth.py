"""Security negatives of API keys (gRPC and HTTP) and of the host tier's shared-memory file.

- No key, a wrong key, the right key in the wrong header or metadata entry, the right key without
  the Bearer scheme: HTTP 401 with an OpenAI-shaped error and `WWW-Authenticate: Bearer`, gRPC
  UNAUTHENTICATED; nothing reaches the engine. Health (and gRPC reflection) stay open.
- Keys are compared in constant time: hmac.compare_digest against every configured key, with no
  early exit on a match.
- The memory service creates the host-tier region file with mode 0600 whatever the umask.
"""

from __future__ import annotations

import os
import stat

import grpc
import httpx2
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.contracts import gateway_service_pb2
from services.common.errors import Unauthenticated
from services.gateway import auth
from services.memory import app as memory_app
from services.memory.config import MemoryConfig
from services.memory.host_region import HostRegion
from tests.gateway_fakes import collect, stack, text_request  # noqa: F401 (stack is a fixture)

pytestmark = pytest.mark.timeout(60)
KEY = "sk-right-key"
KEYS = (KEY, "sk-other-key")
# (headers, what is wrong); every one must get 401
BAD_HTTP_HEADERS = [
    ({}, "no key"),
    ({"Authorization": "Bearer sk-wrong"}, "wrong key"),
    ({"Authorization": f"Bearer {KEY}x"}, "right key plus a character"),
    ({"Authorization": f"Bearer {KEY[:-1]}"}, "a prefix of the right key"),
    ({"X-API-Key": KEY}, "right key, wrong header"),
    ({"api-key": KEY}, "right key, Azure's header"),
    ({"Authorization": KEY}, "right key without the Bearer scheme"),
    ({"Authorization": f"Basic {KEY}"}, "right key, Basic scheme"),
]
BAD_GRPC_METADATA = [
    ((), "no key"),
    ((("authorization", "Bearer sk-wrong"),), "wrong key"),
    ((("x-api-key", KEY),), "right key, wrong metadata entry"),
    ((("authorization", KEY),), "right key without the Bearer scheme"),
]
HTTP_ROUTES = [
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/fake-llama", None),
]


async def test_http_refuses_every_bad_credential_with_an_openai_shaped_401(stack):
    await stack.start(api_keys=KEYS)
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=10) as client:
        for method, path, body in HTTP_ROUTES:
            for headers, why in BAD_HTTP_HEADERS:
                response = await client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (path, why)
                assert response.headers["www-authenticate"] == "Bearer", (path, why)
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")  # as OpenAI's 401
        assert (await client.get("/health")).status_code == 200  # no key needed
        good = await client.post("/v1/completions", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {KEY}"})
        assert good.status_code == 200
    assert len(stack.engine.requests) == 1  # only the authorized request reached the engine
    async with openai.AsyncOpenAI(base_url=f"{stack.handle.http_url}/v1", api_key="sk-wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.completions.create(model="", prompt="hi")


async def test_grpc_refuses_every_bad_credential_with_unauthenticated(stack):
    stub = await stack.start(api_keys=KEYS)
    for metadata, why in BAD_GRPC_METADATA:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await collect(stub.Generate(text_request(), metadata=metadata, timeout=10))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, why
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), metadata=metadata, timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, why
    assert stack.engine.requests == []
    async with grpc.aio.insecure_channel(stack.handle.address) as channel:  # open without a key
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="alise.v1.GatewayService"), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        services = [s.name async for reply in reflection for s in reply.list_services_response.service]
        assert "alise.v1.GatewayService" in services


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    compared = []

    def recording_compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    real_compare = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", recording_compare)
    keys = auth.ApiKeys(("first-key", "second-key", "third-key"))
    keys.check("Bearer first-key")  # matches the first key: the others are still compared
    assert [a for a, _ in compared] == [b"first-key", b"second-key", b"third-key"]
    compared.clear()
    with pytest.raises(Unauthenticated, match="invalid API key"):
        keys.check("Bearer f")
    assert len(compared) == 3 and all(b == b"f" for _, b in compared)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_host_region_file_is_owner_only_whatever_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        region = HostRegion(tmp_path / "region", num_slots=2, slot_bytes=4096)
    finally:
        os.umask(previous)
    try:
        mode = os.stat(region.path).st_mode
        assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o600 and os.stat(region.path).st_uid == os.getuid()
    finally:
        region.close()


async def test_the_memory_service_creates_its_region_owner_only(tmp_path):
    path = tmp_path / "alise-host-tier-test"
    previous = os.umask(0)
    try:
        memory = await memory_app.start(
            MemoryConfig.from_args(
                [
                    "--port",
                    "0",
                    "--metrics-port",
                    "-1",
                    "--host-tier-capacity-bytes",
                    str(1 << 20),
                    "--host-tier-path",
                    str(path),
                ]
            )
        )
    finally:
        os.umask(previous)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        await memory.stop(0)
