"""Speculative decoding through the real engine service: the per-request opt-out travels over gRPC,
and GetStats and /metrics report drafts and acceptances that agree with each other."""

import asyncio

import grpc
import pytest

from services.common.contracts import common_pb2, engine_service_pb2, engine_service_pb2_grpc
from services.engine.app import start
from tests.metrics_scrape import scrape, value
from tests.test_metrics_engine import engine_config

MAX_TOKENS = 40
MOTIF = list(range(100, 109))


async def _generate(stub, request_id: str, *, speculative: bool | None) -> list[int]:
    sampling = common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    if speculative is not None:
        sampling.speculative = speculative
    request = engine_service_pb2.EngineServiceGenerateRequest(
        request_id=request_id, prompt_token_ids=MOTIF * 4, sampling=sampling
    )
    tokens: list[int] = []
    async for response in stub.Generate(request):
        tokens.extend(response.token_ids)
    return tokens


async def _stats(stub) -> engine_service_pb2.EngineServiceGetStatsResponse:
    """The stats once the engine has published its idle snapshot (a stream may end just before it)."""
    for _ in range(100):
        stats = await stub.GetStats(engine_service_pb2.EngineServiceGetStatsRequest())
        if stats.num_running == 0 and stats.num_waiting == 0:
            return stats
        await asyncio.sleep(0.02)
    raise AssertionError(f"engine still busy: {stats}")


@pytest.mark.asyncio
async def test_opt_out_stats_and_metrics_of_an_ngram_engine():
    handle = await start(engine_config(num_kv_blocks=64, speculative="ngram", engine_id="spec-engine"))
    channel = grpc.aio.insecure_channel(handle.address)
    try:
        stub = engine_service_pb2_grpc.EngineServiceStub(channel)
        opted_out = await _generate(stub, "out", speculative=False)
        stats = await _stats(stub)
        assert stats.speculative_method == "ngram"
        assert stats.num_draft_tokens == 0  # the only request opted out
        speculated = await _generate(stub, "in", speculative=None)  # unset = allowed
        assert speculated == opted_out  # greedy: drafts never change the output
        stats = await _stats(stub)
        assert stats.num_draft_tokens > 0 and stats.num_verifies > 0
        assert 0 < stats.num_accepted_draft_tokens <= stats.num_draft_tokens
        assert stats.draft_acceptance_rate == pytest.approx(stats.num_accepted_draft_tokens / stats.num_draft_tokens)
        assert stats.num_generated_tokens == 2 * MAX_TOKENS
        metrics = await scrape(handle.metrics_port)
        assert value(metrics, "alise:spec_decode_num_draft_tokens_total") == stats.num_draft_tokens
        assert value(metrics, "alise:spec_decode_num_accepted_tokens_total") == stats.num_accepted_draft_tokens
        assert value(metrics, "alise:spec_decode_acceptance_rate") == pytest.approx(stats.draft_acceptance_rate)
    finally:
        await channel.close()
        await handle.stop()
