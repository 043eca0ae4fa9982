"""The engine's /metrics over real HTTP: after a known workload its counters equal what was sent."""

import asyncio

import grpc
import pytest

from services.common.contracts import common_pb2, engine_service_pb2, engine_service_pb2_grpc
from services.common.metrics_server import MetricsPort
from services.engine.app import start
from services.engine.config import EngineConfig
from tests.engine_configs import tiny_engine_config
from tests.metrics_scrape import scrape, value, wait_for_value

NUM_REQUESTS = 6
MAX_TOKENS = 40


def engine_config(**overrides) -> EngineConfig:
    # 12 blocks of 16 positions: six requests of ~60 positions each cannot all hold their KV, so
    # fcfs preempts on KV shortage.
    fields = dict(
        engine_id="metrics-engine",
        num_kv_blocks=12,
        max_num_seqs=8,
        scheduler_policy="fcfs",
        metrics_port=MetricsPort(0),
    )
    return tiny_engine_config(**{**fields, **overrides})


async def _generate(stub, request_id: str, prompt: list[int]) -> engine_service_pb2.EngineServiceGenerateResponse:
    sampling = common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    request = engine_service_pb2.EngineServiceGenerateRequest(
        request_id=request_id, prompt_token_ids=prompt, sampling=sampling
    )
    return [response async for response in stub.Generate(request)][-1]


@pytest.mark.asyncio
async def test_counters_and_histograms_equal_the_workload():
    handle = await start(engine_config())
    channel = grpc.aio.insecure_channel(handle.address)
    try:
        assert handle.metrics_port not in (None, 0)
        before = await scrape(handle.metrics_port)
        assert value(before, "alise:num_requests_running") == 0
        assert value(before, "alise:scheduler_policy_info", policy="fcfs") == 1
        assert value(before, "alise:engine_info", engine_id="metrics-engine") == 1
        stub = engine_service_pb2_grpc.EngineServiceStub(channel)
        prompts = [list(range(10, 10 + 14 + i)) for i in range(NUM_REQUESTS)]
        finals = await asyncio.gather(*(_generate(stub, f"m{i}", p) for i, p in enumerate(prompts)))
        num_preemptions = sum(final.timings.num_preemptions for final in finals)
        assert num_preemptions > 0  # the workload was sized to preempt
        samples = await wait_for_value(
            handle.metrics_port, "alise:request_success_total", NUM_REQUESTS, finished_reason="length"
        )
    finally:
        await channel.close()
        await handle.stop()
    num_prompt_tokens = sum(len(p) for p in prompts)
    assert value(samples, "alise:prompt_tokens_total") == num_prompt_tokens
    assert value(samples, "alise:generation_tokens_total") == NUM_REQUESTS * MAX_TOKENS
    assert value(samples, "alise:num_preemptions_total", cause="kv_shortage") == num_preemptions
    assert value(samples, "alise:num_preemptions_total", cause="displacement") == 0
    assert value(samples, "alise:request_prompt_tokens_sum") == num_prompt_tokens
    assert value(samples, "alise:request_generation_tokens_count") == NUM_REQUESTS
    assert value(samples, "alise:request_generation_tokens_sum") == NUM_REQUESTS * MAX_TOKENS
    assert value(samples, "alise:time_to_first_token_seconds_count") == NUM_REQUESTS
    assert value(samples, "alise:e2e_request_latency_seconds_count") == NUM_REQUESTS
    assert value(samples, "alise:request_success_total", finished_reason="aborted") == 0
    assert value(samples, "alise:num_requests_running") == 0
    assert value(samples, "alise:num_requests_waiting") == 0
    assert value(samples, "alise:kv_cache_usage_perc") == 0
    assert value(samples, "alise:num_kv_blocks") == 12
    assert value(samples, "alise:recomputed_tokens_total") > 0  # no memory service: every victim recomputes
    assert "alise:kv_swap_outs_total" not in samples


@pytest.mark.asyncio
async def test_no_endpoint_unless_configured():
    handle = await start(engine_config(metrics_port=None))
    try:
        assert handle.metrics_port is None
    finally:
        await handle.stop()
