"""API keys (HTTP and gRPC) and TLS: public TLS on the gateway, mutual TLS between services.

Certificates are made in the test (tests/tls_certs.py); every server is real, on 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import ssl

import grpc
import httpx2
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.contracts import (
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    memory_service_pb2,
    memory_service_pb2_grpc,
)
from services.common.errors import Unauthenticated
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.common.server import start_server
from services.common.tls import TlsFiles, channel_credentials
from services.engine import app as engine_app
from services.engine.config import EngineConfig
from services.engine.kv_offload.memory_client import MemoryClient
from services.gateway import app
from services.gateway.auth import ApiKeys, bearer_token
from services.gateway.config import GatewayConfig
from services.memory import app as memory_app
from services.memory.config import MemoryConfig
from tests.gateway_fakes import FakeEngine, collect, stack, text_request  # noqa: F401 (stack is a fixture)
from tests.tls_certs import issue, make_authority

pytestmark = pytest.mark.timeout(60)
KEYS = ("key-one", "key-two")


# ----------------------------------------------------------------------------- API keys


def test_api_keys_accept_only_configured_bearer_tokens(tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# comment\n\nkey-three\n")
    keys = ApiKeys.load(KEYS, str(key_file))
    for good in ("Bearer key-one", "bearer key-two", "Bearer   key-three "):
        keys.check(good)
    for bad, message in (
        (None, "missing"),
        ("key-one", "missing"),
        ("Basic key-one", "missing"),
        ("Bearer key-on", "invalid"),
        ("Bearer key-one2", "invalid"),
        ("Bearer # comment", "invalid"),
    ):
        with pytest.raises(Unauthenticated, match=message):
            keys.check(bad)
    ApiKeys(()).check(None)  # no keys: authentication off
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Bearer ") is None
    with pytest.raises(ValueError):
        ApiKeys([""])


async def test_http_requires_a_valid_key_except_on_health(stack, tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text("key-three\n")
    await stack.start(api_keys=KEYS, api_key_file=str(key_file))
    base_url = f"{stack.handle.http_url}/v1"
    for key in ("key-one", "key-three"):
        async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
            completion = await client.completions.create(model="", prompt="hi", max_tokens=4)
            assert completion.usage.completion_tokens > 0
    async with openai.AsyncOpenAI(base_url=base_url, api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as raised:
            await client.models.list()
    assert raised.value.status_code == 401 and raised.value.code == "invalid_api_key"
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=10) as client:
        missing = await client.post("/v1/completions", json={"prompt": "hi"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200  # open unless metrics_require_api_key
    assert len(stack.engine.requests) == 2


async def test_metrics_can_require_the_key(stack):
    await stack.start(api_keys=KEYS, metrics_require_api_key=True)
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=10) as client:
        assert (await client.get("/metrics")).status_code == 401
        authorized = await client.get("/metrics", headers={"Authorization": "Bearer key-two"})
        assert authorized.status_code == 200


async def test_grpc_requires_a_valid_key_except_on_health(stack):
    stub = await stack.start(api_keys=KEYS)
    for metadata in ((), (("authorization", "Bearer nope"),)):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await collect(stub.Generate(text_request(), metadata=metadata, timeout=10))
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), metadata=metadata, timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stack.engine.requests == []
    responses = await collect(
        stub.Generate(text_request(), metadata=(("authorization", "Bearer key-two"),), timeout=10)
    )
    assert responses[-1].finish_reason != 0
    async with grpc.aio.insecure_channel(stack.handle.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """One CA with gateway, engine and memory certificates; a rogue CA with one client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    authority = make_authority(directory)
    rogue = make_authority(directory, "rogue-ca")
    return {
        "ca": authority,
        "gateway": issue(authority, directory, "gateway"),
        "engine": issue(authority, directory, "engine", dns_names=("alise-internal",)),
        "memory": issue(authority, directory, "memory"),
        "rogue": issue(rogue, directory, "rogue-client"),
    }


async def _mtls_fake_engine(engine: FakeEngine, tls: TlsFiles):
    return await start_server(
        host="127.0.0.1",
        port=0,
        service_names=["alise.v1.EngineService"],
        tls=tls,
        require_client_cert=True,
        register=lambda server: engine_service_pb2_grpc.add_EngineServiceServicer_to_server(engine, server),
    )


async def _health(address: str, credentials: grpc.ChannelCredentials | None, options=()) -> bool:
    channel = (
        grpc.aio.secure_channel(address, credentials, options=options)
        if credentials
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_gateway_serves_tls_and_reaches_its_engine_over_mutual_tls(pki):
    engine = FakeEngine()
    engine_server = await _mtls_fake_engine(engine, pki["engine"])
    gateway_tls = TlsFiles(pki["gateway"].cert_path, pki["gateway"].key_path, pki["gateway"].ca_path, "alise-internal")
    handle = await app.start(GatewayConfig(engine_address=engine_server.address, port=0, tls=gateway_tls))
    try:
        assert handle.http_url.startswith("https://")
        verify = ssl.create_default_context(cafile=str(pki["ca"].cert_path))
        async with httpx2.AsyncClient(base_url=handle.http_url, verify=verify, timeout=20) as client:
            response = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4})
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["finish_reason"] == "stop"
        root = grpc.ssl_channel_credentials(root_certificates=pki["ca"].cert_path.read_bytes())
        async with grpc.aio.secure_channel(handle.address, root) as channel:  # no client certificate needed
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            responses = await collect(stub.Generate(text_request(), timeout=10))
        assert responses[-1].finish_reason != 0 and len(engine.requests) == 2
        assert not await _health(handle.address, None)  # plaintext to a TLS port fails
    finally:
        await handle.stop(0)
        await engine_server.stop(0)


async def test_internal_servers_refuse_clients_without_a_certificate_of_their_ca(pki):
    engine_server = await _mtls_fake_engine(FakeEngine(), pki["engine"])
    try:
        ca = pki["ca"].cert_path.read_bytes()
        assert await _health(engine_server.address, channel_credentials(pki["gateway"]))
        assert not await _health(engine_server.address, None)
        assert not await _health(engine_server.address, grpc.ssl_channel_credentials(root_certificates=ca))
        rogue = pki["rogue"]
        rogue_client = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=open(rogue.key_path, "rb").read(),
            certificate_chain=open(rogue.cert_path, "rb").read(),
        )
        assert not await _health(engine_server.address, rogue_client)
        handle = await app.start(GatewayConfig(engine_address=engine_server.address, port=0))  # no TLS
        try:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(grpc.aio.insecure_channel(handle.address))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await collect(stub.Generate(text_request(), timeout=10))
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await handle.stop(0)
    finally:
        await engine_server.stop(0)


async def test_memory_service_flags_turn_on_mutual_tls(pki):
    memory_tls = pki["memory"]
    config = MemoryConfig.from_args(
        [
            "--port",
            "0",
            "--host-tier-capacity-bytes",
            "0",
            "--tls-cert",
            memory_tls.cert_path,
            "--tls-key",
            memory_tls.key_path,
            "--tls-ca",
            memory_tls.ca_path,
        ]
    )
    handle = await memory_app.start(config)
    try:
        assert await _health(handle.address, channel_credentials(pki["engine"]))
        assert not await _health(handle.address, None)
        # the engine's swap client: mutual TLS with the engine's certificate, refused without
        with_tls = MemoryClient(handle.address, "tls-engine", tls=pki["engine"], timeout_s=3)
        plaintext = MemoryClient(handle.address, "plain-engine", timeout_s=3)
        stats_request = memory_service_pb2.MemoryServiceGetStatsRequest()
        stats = await asyncio.to_thread(with_tls.stub.GetStats, stats_request, timeout=3)
        assert stats.ledger_consistent
        with pytest.raises(grpc.RpcError) as raised:
            await asyncio.to_thread(plaintext.stub.GetStats, stats_request, timeout=3)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        with_tls.close()
        plaintext.close()
    finally:
        await handle.stop(0)


def test_tls_flags_and_their_errors(pki, tmp_path):
    gateway = pki["gateway"]
    config = GatewayConfig.from_args(
        [
            "--engine-address",
            "127.0.0.1:1",
            "--api-key",
            "a",
            "--api-key",
            "b",
            "--tls-cert",
            gateway.cert_path,
            "--tls-key",
            gateway.key_path,
            "--tls-ca",
            gateway.ca_path,
            "--http-port",
            "0",
        ]
    )
    assert config.api_keys == ("a", "b") and config.tls == gateway and config.http_listen_port == 0
    assert GatewayConfig.from_args(["--engine-address", "127.0.0.1:1"]).http_listen_port == 8000
    assert GatewayConfig.from_args(["--engine-address", "127.0.0.1:1", "--port", "0"]).http_listen_port == 0
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        TlsFiles(gateway.cert_path, "")
    with pytest.raises(ValueError, match="--tls-ca .* is not a file"):
        TlsFiles(gateway.cert_path, gateway.key_path, str(tmp_path / "missing.pem"))


async def test_engine_flags_serve_mutual_tls_and_register_with_memory_over_it(pki):
    memory_tls = pki["memory"]
    memory = await memory_app.start(MemoryConfig(port=0, report_interval_s=0.2, tls=memory_tls))
    engine_tls = pki["engine"]
    config = EngineConfig.from_args(
        [
            "--port",
            "0",
            "--model",
            DUMMY_TINY_MODEL,
            "--dtype",
            "float32",
            "--device",
            "cpu",
            "--cpu-threads",
            "1",
            "--num-kv-blocks",
            "64",
            "--metrics-port",
            "-1",
            "--memory-address",
            memory.address,
            "--tls-cert",
            engine_tls.cert_path,
            "--tls-key",
            engine_tls.key_path,
            "--tls-ca",
            engine_tls.ca_path,
            "--tls-peer-name",
            "memory",
        ]
    )
    engine = await engine_app.start(config)
    try:
        assert await _health(engine.address, channel_credentials(pki["gateway"]))
        assert not await _health(engine.address, None)
        async with grpc.aio.secure_channel(memory.address, channel_credentials(pki["gateway"])) as channel:
            stub = memory_service_pb2_grpc.MemoryServiceStub(channel)
            for _ in range(50):  # the engine's reporter registers over mutual TLS within a few reports
                stats = await stub.GetStats(memory_service_pb2.MemoryServiceGetStatsRequest(), timeout=3)
                if any(usage.engine_id == config.engine_id for usage in stats.engines):
                    break
                await asyncio.sleep(0.1)
        assert any(usage.engine_id == config.engine_id for usage in stats.engines)
    finally:
        await engine.stop(0)
        await memory.stop(0)
