"""Every service's /metrics, scraped over real HTTP from the four real services on loopback: each
parses, and after a known workload the counters equal what the workload sent (requests, prompt and
generated tokens, preemptions, errors, cancellations), on the gRPC and the HTTP API alike. Every
series the Grafana dashboard plots exists."""

from __future__ import annotations

import asyncio
import json
import re

import grpc
import openai
import pytest
import pytest_asyncio

from services.common.contracts import (
    common_pb2,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    predictor_service_pb2,
    predictor_service_pb2_grpc,
)
from services.common.metrics_server import MetricsPort
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine import app as engine_app
from services.engine.config import EngineConfig
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig
from services.memory import app as memory_app
from services.memory.config import MemoryConfig
from services.predictor import app as predictor_app
from services.predictor.config import PredictorConfig
from tests.deploy_support import DEPLOY_DIR
from tests.metrics_scrape import scrape, value, wait_for_value

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]
NUM_REQUESTS = 6
MAX_TOKENS = 32
DASHBOARD = DEPLOY_DIR / "grafana" / "alise-dashboard.json"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack():
    metrics = MetricsPort(0)
    memory = await memory_app.start(MemoryConfig(port=0, report_interval_s=0.2, metrics_port=metrics))
    predictor = await predictor_app.start(PredictorConfig(port=0, reload_poll_interval_s=0, metrics_port=metrics))
    # 10 blocks of 16 positions for six requests of ~45 positions each: KV runs short, requests are preempted
    engine = await engine_app.start(
        EngineConfig(
            port=0,
            model=DUMMY_TINY_MODEL,
            dtype="float32",
            device="cpu",
            num_kv_blocks=10,
            max_num_seqs=8,
            memory_address=memory.address,
            engine_id="metrics-engine",
            cpu_threads=1,
            drain_s=0.0,
            metrics_port=metrics,
        )
    )
    gateway = await gateway_app.start(
        GatewayConfig(
            engine_address=engine.address,
            predictor_address=predictor.address,
            port=0,
            predictor_timeout_ms=2000,
        )
    )
    handles = {"memory": memory, "predictor": predictor, "engine": engine, "gateway": gateway}
    yield handles
    for name in ("gateway", "engine", "predictor", "memory"):
        await handles[name].stop()


def _request(prompt: str, max_tokens: int = MAX_TOKENS, **sampling) -> gateway_service_pb2.GenerateRequest:
    params = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **sampling)
    return gateway_service_pb2.GenerateRequest(prompt_text=prompt, sampling=params)


async def _final(stub, request) -> gateway_service_pb2.GenerateResponse:
    return [response async for response in stub.Generate(request)][-1]


async def _gateway_samples(gateway) -> dict:
    port = int(gateway.http_url.rsplit(":", 1)[1])
    return await scrape(port)


async def test_counters_equal_the_workload_on_every_service(stack):
    gateway, engine, predictor = stack["gateway"], stack["engine"], stack["predictor"]
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        prompts = [f"Request number {i}: tell me about the sea and the sky." for i in range(NUM_REQUESTS)]
        finals = await asyncio.gather(*(_final(stub, _request(p)) for p in prompts))
        engine_samples = await wait_for_value(
            engine.metrics_port, "alise:request_success_total", NUM_REQUESTS, finished_reason="length"
        )
        gateway_samples = await _gateway_samples(gateway)
    num_prompt_tokens = sum(final.usage.prompt_tokens for final in finals)
    num_preemptions = sum(final.timings.num_preemptions for final in finals)
    assert num_preemptions > 0  # the KV pool was sized to preempt
    assert value(gateway_samples, "alise:request_success_total", finished_reason="length") == NUM_REQUESTS
    assert value(gateway_samples, "alise:prompt_tokens_total") == num_prompt_tokens
    assert value(gateway_samples, "alise:generation_tokens_total") == NUM_REQUESTS * MAX_TOKENS
    assert value(gateway_samples, "alise:request_generation_tokens_sum") == NUM_REQUESTS * MAX_TOKENS
    assert value(gateway_samples, "alise:time_to_first_token_seconds_count") == NUM_REQUESTS
    assert (
        NUM_REQUESTS
        <= value(gateway_samples, "alise:inter_token_latency_seconds_count")
        <= NUM_REQUESTS * (MAX_TOKENS - 1)
    )
    assert value(gateway_samples, "alise:e2e_request_latency_seconds_count") == NUM_REQUESTS
    assert value(gateway_samples, "alise:output_length_estimates_total", source="predictor") == NUM_REQUESTS
    assert value(gateway_samples, "alise:predictor_fallbacks_total", source="fallback") == 0
    assert value(gateway_samples, "alise:num_requests_in_flight") == 0
    assert value(gateway_samples, "alise:engine_replica_up", replica=engine.address) == 1
    assert value(gateway_samples, "alise:predictor_replica_up", replica=predictor.address) == 1
    assert value(engine_samples, "alise:prompt_tokens_total") == num_prompt_tokens
    assert value(engine_samples, "alise:generation_tokens_total") == NUM_REQUESTS * MAX_TOKENS
    preemptions = sum(
        value(engine_samples, "alise:num_preemptions_total", cause=c) for c in ("kv_shortage", "displacement")
    )
    assert preemptions == num_preemptions
    assert value(engine_samples, "alise:scheduler_policy_info", policy="alise") == 1
    predictor_samples = await wait_for_value(predictor.metrics_port, "alise:predictor_feedback_total", NUM_REQUESTS)
    assert value(predictor_samples, "alise:predictor_predictions_total") == NUM_REQUESTS
    assert value(predictor_samples, "alise:predictor_feedback_censored_total") == NUM_REQUESTS  # all cut at max_tokens


async def test_errors_cancellations_and_the_http_api_are_counted(stack):
    gateway, engine = stack["gateway"], stack["engine"]
    before = await _gateway_samples(gateway)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _final(stub, _request("bad", top_p=1.5))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        call = stub.Generate(_request("A long one, cancelled after its first tokens.", max_tokens=120))
        async for response in call:
            if response.token_ids:
                break
        call.cancel()
    client = openai.AsyncOpenAI(base_url=f"{gateway.http_url}/v1", api_key="x", max_retries=0, timeout=60)
    async with client:
        completion = await client.completions.create(
            model=DUMMY_TINY_MODEL,
            prompt="Hello over HTTP.",
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
    assert completion.usage.completion_tokens == 8
    after = await wait_for_value(
        int(gateway.http_url.rsplit(":", 1)[1]), "alise:request_failure_total", 1, code="cancelled"
    )
    assert value(after, "alise:request_failure_total", code="invalid_argument") == 1
    finished = value(after, "alise:request_success_total", finished_reason="length")
    assert finished == value(before, "alise:request_success_total", finished_reason="length") + 1
    assert value(after, "alise:num_requests_in_flight") == 0
    await wait_for_value(engine.metrics_port, "alise:request_success_total", 1, finished_reason="aborted")


async def test_every_series_the_dashboard_plots_is_exported(stack):
    predictor = stack["predictor"]
    async with grpc.aio.insecure_channel(predictor.address) as channel:  # live accuracy needs uncensored lengths
        reports = [_feedback(i, actual=10 * (i + 1)) for i in range(3)]
        await predictor_service_pb2_grpc.PredictorServiceStub(channel).ReportFeedback(
            predictor_service_pb2.ReportFeedbackRequest(requests=reports), timeout=10
        )
    exported = set(await _gateway_samples(stack["gateway"]))
    for name in ("engine", "predictor", "memory"):
        exported |= set(await scrape(stack[name].metrics_port))
    plotted = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            plotted |= set(re.findall(r"alise:[a-z0-9_]+", target["expr"]))
    assert plotted and plotted <= exported, sorted(plotted - exported)


def _feedback(index: int, *, actual: int) -> predictor_service_pb2.FinishedRequest:
    prediction = common_pb2.OutputLengthPrediction(
        mean_tokens=actual + 1,
        source=common_pb2.PREDICTION_SOURCE_PREDICTOR,
        quantiles=[common_pb2.LengthQuantile(level=q, num_tokens=actual * f) for q, f in ((0.5, 1.0), (0.9, 2.0))],
    )
    return predictor_service_pb2.FinishedRequest(
        request_id=f"fb-{index}",
        prompt_text="p",
        num_prompt_tokens=3,
        num_output_tokens=actual,
        served_model="m",
        finish_reason=common_pb2.FINISH_REASON_EOS,
        max_tokens=512,
        prediction=prediction,
    )
