"""Refusals say why in machine-readable form: `alise-refusal-reason` from the engine, through the gateway.

A real engine (random-weight dummy-llama-tiny on CPU, two live requests at most) and an in-process
gateway on loopback. Two long streams fill the engine; then each kind of refusal is provoked and
its trailing metadata (gRPC) or header and error `code` (HTTP) checked, with GetStats reporting the
admission figures. Last, an engine drain whose deadline passes ends a gateway stream UNAVAILABLE, DRAINING.
"""

from __future__ import annotations

import asyncio

import grpc
import httpx2
import pytest
import pytest_asyncio

from services.common.contracts import (
    common_pb2,
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
)
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.common.refusal import REFUSAL_REASON_KEY, RefusalReason, refusal_reason_of
from services.engine import app as engine_app
from services.engine.admission_control import PROFILE_INTERVAL_S
from services.engine.config import EngineConfig
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
MAX_LIVE_REQUESTS = 2
LONG_MAX_TOKENS = 600  # runs for seconds on CPU: the engine stays full while the refusals are tried


def _engine_request(request_id: str, max_tokens: int, num_prompt_tokens: int = 4, predicted_tokens: float = 0.0):
    return engine_service_pb2.EngineServiceGenerateRequest(
        request_id=request_id,
        prompt_token_ids=[1 + i % 400 for i in range(num_prompt_tokens)],
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
        prediction=common_pb2.OutputLengthPrediction(mean_tokens=predicted_tokens) if predicted_tokens else None,
    )


async def _refusal(call) -> tuple[grpc.StatusCode, RefusalReason | None, str]:
    """Reads a call to its end; it must fail: (status, reason from trailing metadata, details)."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        while await call.read() is not grpc.aio.EOF:  # read(), not iteration: a caller may have read already
            pass
    error = failed.value
    return error.code(), refusal_reason_of(error.trailing_metadata()), error.details() or ""


class Running:
    """The engine, the gateway, stubs, and the two long streams that fill the engine."""

    def __init__(self, engine, gateway) -> None:
        self.engine, self.gateway = engine, gateway
        self.engine_channel = grpc.aio.insecure_channel(engine.address)
        self.gateway_channel = grpc.aio.insecure_channel(gateway.address)
        self.engine_stub = engine_service_pb2_grpc.EngineServiceStub(self.engine_channel)
        self.gateway_stub = gateway_service_pb2_grpc.GatewayServiceStub(self.gateway_channel)
        self.long_calls: list = []
        self.engine_stopped = False  # the last test stops the engine itself

    async def stats(self) -> engine_service_pb2.EngineServiceGetStatsResponse:
        return await self.engine_stub.GetStats(engine_service_pb2.EngineServiceGetStatsRequest())

    async def fill(self) -> None:
        """Starts MAX_LIVE_REQUESTS long streams and waits for a token of each and a measured drain rate."""
        for index in range(MAX_LIVE_REQUESTS):
            call = self.engine_stub.Generate(_engine_request(f"long-{index}", LONG_MAX_TOKENS))
            await call.read()  # the first message: admitted and running
            self.long_calls.append(call)
        for _ in range(200):
            if (await self.stats()).seconds_per_output_token > 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the engine measured no drain rate while decoding two streams")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def running():
    engine = await engine_app.start(
        EngineConfig(
            port=0,
            model=DUMMY_TINY_MODEL,
            dtype="float32",
            device="cpu",
            num_kv_blocks=100,  # 1,600 token positions
            max_num_seqs=16,
            max_waiting_requests=MAX_LIVE_REQUESTS,
            engine_id="refusal-engine",
            cpu_threads=1,
            drain_s=0.0,
        )
    )
    gateway = await gateway_app.start(GatewayConfig(engine_address=engine.address, port=0))
    stack = Running(engine, gateway)
    yield stack
    for call in stack.long_calls:
        call.cancel()
    await stack.gateway_channel.close()
    await stack.engine_channel.close()
    await gateway.stop()
    if not stack.engine_stopped:
        await engine.stop()


async def test_the_engine_names_each_refusal_and_getstats_reports_its_admission(running):
    await running.fill()
    stats = await running.stats()
    assert (stats.num_live_requests, stats.max_live_requests) == (MAX_LIVE_REQUESTS, MAX_LIVE_REQUESTS)
    assert stats.num_live_prompt_tokens == 4 * MAX_LIVE_REQUESTS and stats.max_live_prompt_tokens > 0
    assert stats.seconds_per_output_token > 0
    assert stats.max_num_seqs == 16  # the batch capacity the gateway's --max-queued-work-s predicts waits with
    assert stats.predicted_outstanding_work_s == pytest.approx(
        stats.predicted_outstanding_tokens * stats.seconds_per_output_token, rel=0.5
    )  # the same window rate, one snapshot apart at most

    code, reason, details = await _refusal(running.engine_stub.Generate(_engine_request("third", 8)))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, RefusalReason.QUEUE_FULL), details
    assert (await running.stats()).num_refused_queue_full >= 1

    too_big = _engine_request("too-big", max_tokens=1000, num_prompt_tokens=1000)  # 2,000 > 1,600 positions
    code, reason, details = await _refusal(running.engine_stub.Generate(too_big))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, RefusalReason.EXCEEDS_KV_CAPACITY), details

    running.long_calls.pop().cancel()  # one place free: the caps admit, the deadline check decides
    for _ in range(100):
        if (await running.stats()).num_live_requests < MAX_LIVE_REQUESTS:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(4 * PROFILE_INTERVAL_S)  # the queue profile the check reads has the measured rate
    rate_s = (await running.stats()).seconds_per_output_token
    hopeless = _engine_request("hopeless", max_tokens=500, predicted_tokens=500.0)
    timeout_s = max(0.2, 100 * rate_s)  # 500 own tokens at the measured rate need >= 5x that
    code, reason, details = await _refusal(running.engine_stub.Generate(hopeless, timeout=timeout_s))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, RefusalReason.DEADLINE_UNMEETABLE), details
    assert (await running.stats()).num_refused_deadline >= 1


async def test_the_gateway_passes_the_reason_on_over_grpc_and_http(running):
    if len(running.long_calls) < MAX_LIVE_REQUESTS:  # the first test freed a place: full again
        call = running.engine_stub.Generate(_engine_request("long-again", LONG_MAX_TOKENS))
        await call.read()
        running.long_calls.append(call)
    request = gateway_service_pb2.GenerateRequest(
        prompt_text="hello there", sampling=common_pb2.SamplingParams(max_tokens=8, ignore_eos=True)
    )
    code, reason, details = await _refusal(running.gateway_stub.Generate(request, timeout=30.0))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, RefusalReason.QUEUE_FULL), details

    # The gateway now knows the replica is full: HTTP is refused before any work, reason included.
    async with httpx2.AsyncClient(base_url=running.gateway.http_url, timeout=30.0) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        reply = await client.post("/v1/completions", json={"model": model, "prompt": "hello", "max_tokens": 8})
    assert reply.status_code == 429, reply.text
    assert reply.headers[REFUSAL_REASON_KEY] == RefusalReason.QUEUE_FULL.value
    assert reply.json()["error"]["code"] == "queue_full"


async def test_an_engine_drain_deadline_reaches_the_gateways_client_as_draining(running):
    """The engine drains (SIGTERM) with a stream running past its deadline: that stream ends
    UNAVAILABLE with reason DRAINING at the engine, and the gateway passes both on to its client."""
    for call in running.long_calls:  # room on the engine again
        call.cancel()
    running.long_calls.clear()
    request = gateway_service_pb2.GenerateRequest(
        prompt_text="hello", sampling=common_pb2.SamplingParams(max_tokens=LONG_MAX_TOKENS, ignore_eos=True)
    )
    for _ in range(40):  # until the gateway forgets the earlier queue-full refusal (one health interval)
        stream = running.gateway_stub.Generate(request, timeout=60.0)
        try:
            await stream.read()  # the first tokens: running on the engine
            break
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
            await asyncio.sleep(0.25)
    running.engine_stopped = True
    stopping = asyncio.create_task(running.engine.stop(0.2))  # drain deadline 0.2 s
    code, reason, details = await _refusal(stream)
    await stopping
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, RefusalReason.DRAINING), details


async def test_the_domain_enum_is_the_proto_enum():
    names = set(common_pb2.RefusalReason.keys()) - {"REFUSAL_REASON_UNSPECIFIED"}
    assert {reason.value for reason in RefusalReason} == names
    assert RefusalReason.DEADLINE_UNMEETABLE.openai_code == "deadline_unmeetable"
    assert refusal_reason_of([(REFUSAL_REASON_KEY, "REFUSAL_REASON_FROM_THE_FUTURE")]) is None  # a newer peer
    assert refusal_reason_of([("other", "x"), (REFUSAL_REASON_KEY, b"REFUSAL_REASON_DRAINING")]) == (
        RefusalReason.DRAINING
    )
