"""Mutual TLS between the four real services, wired as deploy/ wires it, with certificates made here.

memory, predictor, engine (dummy-llama-tiny) and gateway run in this process on 127.0.0.1, each with
its own certificate and key, the CA, and the flags of deploy/docker-compose.tls.yml (--tls-ca on
every service, --tls-peer-name alise-internal where it dials peers). A request through the gateway
reaches the predictor and the engine, and the engine reports to memory, all over mutual TLS. Every
internal server then refuses a peer with no client certificate, with one from another CA, with an
expired one from the right CA, and plaintext, while the right certificate works. And the other way
round: a client (the gateway dialing an engine, an SDK dialing the gateway) refuses a server whose
certificate is expired or signed by another CA.
"""

from __future__ import annotations

import asyncio
import datetime
import pathlib
import ssl

import grpc
import httpx2
import openai
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli.dev_certs import INTERNAL_NAME
from services.common.contracts import (
    common_pb2,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    memory_service_pb2,
    memory_service_pb2_grpc,
)
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.common.tls import TlsFiles
from services.engine import app as engine_app
from services.engine.config import EngineConfig
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig
from services.memory import app as memory_app
from services.memory.config import MemoryConfig
from services.predictor import app as predictor_app
from services.predictor.config import PredictorConfig
from tests.gateway_fakes import FakeEngine
from tests.test_auth_tls import _mtls_fake_engine
from tests.tls_certs import Authority, issue, make_authority

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]
API_KEY = "sk-test-mtls"
SERVICE_NAMES = {
    "engine": "alise.v1.EngineService",
    "predictor": "alise.v1.PredictorService",
    "memory": "alise.v1.MemoryService",
}


def issue_expired(authority: Authority, directory: pathlib.Path, name: str) -> TlsFiles:
    """A certificate of the right CA and names, valid from 10 days ago until yesterday."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    names = [x509.DNSName(n) for n in (name, INTERNAL_NAME, "localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(authority.key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TlsFiles(str(cert_path), str(key_path), str(authority.cert_path))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mtls")
    authority, rogue = make_authority(directory), make_authority(directory, "rogue-ca")
    files = {name: issue(authority, directory, name) for name in ("gateway", "engine", "predictor", "memory")}
    files["rogue"] = issue(rogue, directory, "rogue-client", dns_names=(INTERNAL_NAME,))
    files["rogue_ca_path"] = str(rogue.cert_path)
    files["expired"] = issue_expired(authority, directory, "expired-client")
    return files


def _tls_flags(files: TlsFiles, *, peer_name: bool) -> list[str]:
    flags = ["--tls-cert", files.cert_path, "--tls-key", files.key_path, "--tls-ca", files.ca_path]
    return flags + (["--tls-peer-name", INTERNAL_NAME] if peer_name else [])


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def services(pki):
    """The four services with the compose overlay's TLS flags, on free ports."""
    memory = await memory_app.start(
        MemoryConfig.from_args(
            [
                "--port",
                "0",
                "--host-tier-capacity-bytes",
                "0",
                "--metrics-port",
                "-1",
                *_tls_flags(pki["memory"], peer_name=False),
            ]
        )
    )
    predictor = await predictor_app.start(
        PredictorConfig.from_args(
            [
                "--port",
                "0",
                "--metrics-port",
                "-1",
                "--cpu-only",
                "--intra-op-threads",
                "1",
                *_tls_flags(pki["predictor"], peer_name=False),
            ]
        )
    )
    engine = await engine_app.start(
        EngineConfig.from_args(
            [
                "--port",
                "0",
                "--metrics-port",
                "-1",
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
                "--memory-address",
                memory.address,
                "--engine-id",
                "mtls-engine",
                *_tls_flags(pki["engine"], peer_name=True),
            ]
        )
    )
    gateway = await gateway_app.start(
        GatewayConfig.from_args(
            [
                "--port",
                "0",
                "--engine-address",
                engine.address,
                "--predictor-address",
                predictor.address,
                "--predictor-timeout-ms",
                "5000",
                "--api-key",
                API_KEY,
                *_tls_flags(pki["gateway"], peer_name=True),
            ]
        )
    )
    handles = {"memory": memory, "predictor": predictor, "engine": engine, "gateway": gateway}
    yield handles
    for name in ("gateway", "engine", "predictor", "memory"):
        await handles[name].stop(0)


def _credentials(ca_path: str, files: TlsFiles | None) -> grpc.ChannelCredentials:
    chain = (
        (pathlib.Path(files.cert_path).read_bytes(), pathlib.Path(files.key_path).read_bytes())
        if files
        else (None, None)
    )
    return grpc.ssl_channel_credentials(
        pathlib.Path(ca_path).read_bytes(), private_key=chain[1], certificate_chain=chain[0]
    )


async def _serving(address: str, service: str, credentials: grpc.ChannelCredentials | None) -> bool:
    options = (("grpc.ssl_target_name_override", INTERNAL_NAME),)
    channel = (
        grpc.aio.secure_channel(address, credentials, options=options)
        if credentials is not None
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3
            )
        except grpc.aio.AioRpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_request_crosses_every_mutual_tls_link(services, pki):
    gateway = services["gateway"]
    root = grpc.ssl_channel_credentials(pathlib.Path(pki["gateway"].ca_path).read_bytes())
    async with grpc.aio.secure_channel(gateway.address, root) as channel:  # public port: no client certificate
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        request = gateway_service_pb2.GenerateRequest(
            prompt_text="Hello", sampling=common_pb2.SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
        )
        responses = [
            r async for r in stub.Generate(request, metadata=(("authorization", f"Bearer {API_KEY}"),), timeout=60)
        ]
    final = responses[-1]
    assert final.usage.completion_tokens == 6
    assert final.prediction.source == common_pb2.PREDICTION_SOURCE_PREDICTOR  # the predictor answered over mTLS
    async with grpc.aio.secure_channel(
        services["memory"].address,
        _credentials(pki["memory"].ca_path, pki["gateway"]),
        options=(("grpc.ssl_target_name_override", INTERNAL_NAME),),
    ) as channel:
        memory = memory_service_pb2_grpc.MemoryServiceStub(channel)
        for _ in range(100):  # the engine registers with memory over mTLS
            stats = await memory.GetStats(memory_service_pb2.MemoryServiceGetStatsRequest(), timeout=3)
            if any(usage.engine_id == "mtls-engine" for usage in stats.engines):
                break
            await asyncio.sleep(0.1)
    assert any(usage.engine_id == "mtls-engine" for usage in stats.engines)


@pytest.mark.parametrize("name", ["engine", "predictor", "memory"])
async def test_internal_servers_accept_only_a_valid_client_certificate_of_their_ca(services, pki, name):
    address, service, ca = services[name].address, SERVICE_NAMES[name], pki["gateway"].ca_path
    assert await _serving(address, service, _credentials(ca, pki["gateway"]))  # the right certificate
    assert not await _serving(address, service, None)  # plaintext
    assert not await _serving(address, service, _credentials(ca, None))  # TLS, no client certificate
    assert not await _serving(address, service, _credentials(ca, pki["rogue"]))  # a certificate of another CA
    assert not await _serving(address, service, _credentials(ca, pki["expired"]))  # expired, of the right CA


async def test_clients_refuse_servers_with_an_expired_or_foreign_certificate(pki):
    """The gateway dialing an engine, and SDK clients dialing the gateway, verify the server's certificate."""
    for server_files in (pki["expired"], pki["rogue"]):
        engine = FakeEngine()
        engine_server = await _mtls_fake_engine(
            engine, TlsFiles(server_files.cert_path, server_files.key_path, pki["engine"].ca_path)
        )
        gateway_tls = TlsFiles(pki["gateway"].cert_path, pki["gateway"].key_path, pki["gateway"].ca_path, INTERNAL_NAME)
        gateway = await gateway_app.start(GatewayConfig(engine_address=engine_server.address, port=0, tls=gateway_tls))
        try:
            async with grpc.aio.secure_channel(gateway.address, _credentials(pki["gateway"].ca_path, None)) as channel:
                stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    [r async for r in stub.Generate(gateway_service_pb2.GenerateRequest(prompt_text="hi"), timeout=10)]
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and engine.requests == []
        finally:
            await gateway.stop(0)
            await engine_server.stop(0)
    for server_files in (pki["expired"], pki["rogue"]):
        public = TlsFiles(server_files.cert_path, server_files.key_path)
        gateway = await gateway_app.start(GatewayConfig(engine_address="127.0.0.1:1", port=0, tls=public))
        try:
            verify = ssl.create_default_context(cafile=pki["gateway"].ca_path)
            async with httpx2.AsyncClient(base_url=gateway.http_url, verify=verify, timeout=5) as client:
                with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await client.get("/health")
            sdk = openai.AsyncOpenAI(
                base_url=f"{gateway.http_url}/v1",
                api_key="x",
                max_retries=0,
                http_client=httpx2.AsyncClient(verify=verify),
            )
            with pytest.raises(openai.APIConnectionError):
                await sdk.models.list()
            await sdk.close()
            grpc_client = _credentials(pki["gateway"].ca_path, None)
            assert not await _serving(gateway.address, "alise.v1.GatewayService", grpc_client)
        finally:
            await gateway.stop(0)
