"""services.client against a real gateway (fake engine): streaming, typed errors, safe retries, auth, TLS."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.client import (
    AliseClient,
    AsyncAliseClient,
    AuthenticationError,
    ClientTls,
    FinishReason,
    InvalidRequestError,
    RateLimitError,
    RefusalReason,
    UnavailableError,
    build_request,
)
from services.common.contracts import common_pb2, engine_service_pb2
from services.common.tls import TlsFiles
from services.gateway import app
from services.gateway.config import GatewayConfig
from tests.gateway_fakes import TOKENIZER, FakeEngine, expected_continuation, stack, start_fake_engine  # noqa: F401
from tests.tls_certs import issue, make_authority

pytestmark = pytest.mark.timeout(60)


class FlakyEngine(FakeEngine):
    """Fails its first `failures` calls with UNAVAILABLE, after `tokens_before_failure` messages."""

    def __init__(self, failures: int, tokens_before_failure: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.tokens_before_failure = tokens_before_failure

    async def Generate(self, request, context):  # noqa: N802
        if self.failures > 0:
            self.failures -= 1
            self.requests.append(request)
            for token_id in self.output_ids[: self.tokens_before_failure]:
                yield engine_service_pb2.EngineServiceGenerateResponse(token_ids=[token_id])
            await context.abort(grpc.StatusCode.UNAVAILABLE, "engine restarting")
        async for message in super().Generate(request, context):
            yield message


async def test_async_client_streams_chunks_and_completes(stack):
    await stack.start()
    async with AsyncAliseClient(stack.handle.address) as client:
        info = await client.model_info()
        assert info.model_name == "fake-llama"
        chunks = [chunk async for chunk in client.generate("Say hello", max_tokens=8, temperature=0.0, seed=3)]
        completion = await client.complete(build_request("Say hello", max_tokens=8, priority="batch"))
    prompt_ids = TOKENIZER.encode("Say hello", add_bos=True)
    assert "".join(c.text for c in chunks) == expected_continuation(prompt_ids, stack.engine.output_ids)
    assert chunks[-1].finish_reason is FinishReason.EOS and chunks[0].finish_reason is None
    assert chunks[-1].num_prompt_tokens == len(prompt_ids)
    assert completion.token_ids == tuple(stack.engine.output_ids) and completion.finish_reason is FinishReason.EOS
    first, second = stack.engine.requests
    assert first.sampling.temperature == 0.0 and first.sampling.seed == 3
    assert second.priority_class == common_pb2.PRIORITY_CLASS_BATCH


async def test_sync_client_streams_and_raises_typed_errors(stack):
    await stack.start()

    def run():
        with AliseClient(stack.handle.address) as client:
            completion = client.complete(prompt_token_ids=[1, 100, 200], max_tokens=4)
            with pytest.raises(InvalidRequestError) as raised:
                list(client.generate("hi", top_p=1.5))
            return completion, raised.value

    completion, error = await asyncio.to_thread(run)
    assert completion.num_completion_tokens == len(stack.engine.output_ids)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "sampling.top_p" in error.details


async def test_unavailable_before_the_first_token_is_retried(stack):
    stack.engine = FlakyEngine(failures=1)
    await stack.start(max_engine_attempts=1)
    async with AsyncAliseClient(stack.handle.address, retry_backoff_s=0.01) as client:
        completion = await client.complete("Say hello")
    assert completion.finish_reason is FinishReason.EOS and len(stack.engine.requests) == 2


async def test_unavailable_after_tokens_is_not_retried(stack):
    stack.engine = FlakyEngine(failures=1, tokens_before_failure=1)
    await stack.start(max_engine_attempts=1)
    received = []
    async with AsyncAliseClient(stack.handle.address, retry_backoff_s=0.01) as client:
        with pytest.raises(UnavailableError):
            async for chunk in client.generate("Say hello"):
                received.append(chunk)
    assert len(received) == 1 and len(stack.engine.requests) == 1


async def test_other_errors_are_not_retried(stack):
    stack.engine.abort_status = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
    await stack.start()
    async with AsyncAliseClient(stack.handle.address, retry_backoff_s=0.01) as client:
        with pytest.raises(RateLimitError, match="queue full") as raised:
            await client.complete("Say hello")
    assert len(stack.engine.requests) == 1
    assert raised.value.refusal_reason is None  # no alise-refusal-reason: not told why


async def test_a_refusal_says_why_as_a_typed_reason_sync_and_async(stack):
    """The engine's alise-refusal-reason, passed on by the gateway, reaches the caller as a RefusalReason."""
    metadata = RefusalReason.EXCEEDS_KV_CAPACITY.metadata()
    stack.engine.abort_status = (grpc.StatusCode.RESOURCE_EXHAUSTED, "needs more KV blocks than exist", metadata)
    await stack.start()
    async with AsyncAliseClient(stack.handle.address) as client:
        with pytest.raises(RateLimitError) as raised:
            await client.complete("Say hello")
    assert raised.value.refusal_reason is RefusalReason.EXCEEDS_KV_CAPACITY
    assert "[EXCEEDS_KV_CAPACITY]" in str(raised.value)

    def run():
        with AliseClient(stack.handle.address) as client:
            with pytest.raises(RateLimitError) as raised:
                list(client.generate("Say hello"))
            return raised.value

    assert (await asyncio.to_thread(run)).refusal_reason is RefusalReason.EXCEEDS_KV_CAPACITY


async def test_the_gateways_own_refusal_names_its_reason(stack):
    """--max-in-flight-requests 1 and a slow stream in flight: the next call is refused by the gateway, QUEUE_FULL."""
    stack.engine.output_ids = [500] * 50
    stack.engine.message_delay_s = 0.05
    await stack.start(max_in_flight_requests=1)
    async with AsyncAliseClient(stack.handle.address) as client:
        stream = client.generate("Say hello")
        await stream.__anext__()  # the first stream holds the one place
        with pytest.raises(RateLimitError) as raised:
            await client.complete("Say hello again")
        await stream.aclose()
    assert raised.value.refusal_reason is RefusalReason.QUEUE_FULL


async def test_leaving_the_stream_early_cancels_the_generation(stack):
    stack.engine.output_ids = [500] * 50
    stack.engine.message_delay_s = 0.02
    await stack.start()
    async with AsyncAliseClient(stack.handle.address) as client:
        async for _ in client.generate("Say hello"):
            break
    await asyncio.wait_for(stack.engine.cancelled.wait(), timeout=5)
    assert stack.engine.cancelled.is_set()


async def test_api_key_and_tls(tmp_path):
    authority = make_authority(tmp_path)
    server_tls: TlsFiles = issue(authority, tmp_path, "gateway")
    engine = FakeEngine()
    engine_server = await start_fake_engine(engine)
    config = GatewayConfig(
        engine_address=engine_server.address,
        port=0,
        api_keys=("secret",),
        tls=TlsFiles(server_tls.cert_path, server_tls.key_path),
    )
    handle = await app.start(config)
    try:
        tls = ClientTls(ca_path=str(authority.cert_path))
        async with AsyncAliseClient(handle.address, tls=tls, max_retries=0) as client:
            with pytest.raises(AuthenticationError):
                await client.complete("Say hello")
        async with AsyncAliseClient(handle.address, api_key="secret", tls=tls) as client:
            completion = await client.complete("Say hello")
        assert completion.finish_reason is FinishReason.EOS
    finally:
        await handle.stop(0)
        await engine_server.stop(0)
