"""`alise generate` and `alise bench stack` against a fake gateway + engine on 127.0.0.1:0.

The fake server runs on its own event loop in a thread, because the commands under test call
asyncio.run() themselves, exactly as they do from the console script.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from services.cli import main as cli_main
from services.common.contracts import (
    common_pb2,
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
)
from services.common.errors import InvalidRequest
from services.common.server import start_server

WORDS = ["Hello", ",", " world", "!"]


class FakeGateway(gateway_service_pb2_grpc.GatewayServiceServicer):
    def __init__(self) -> None:
        self.requests: list[gateway_service_pb2.GenerateRequest] = []

    async def Generate(self, request, context):
        self.requests.append(request)
        if request.prompt_text == "bad":
            raise InvalidRequest("prompt is not acceptable")
        num_tokens = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else len(WORDS)
        for index in range(num_tokens):
            yield gateway_service_pb2.GenerateResponse(token_ids=[100 + index], text=WORDS[index % len(WORDS)])
        yield gateway_service_pb2.GenerateResponse(
            finish_reason=common_pb2.FINISH_REASON_LENGTH,
            usage=common_pb2.Usage(prompt_tokens=len(request.prompt_text.split()), completion_tokens=num_tokens),
            prediction=common_pb2.OutputLengthPrediction(mean_tokens=9.0, source=common_pb2.PREDICTION_SOURCE_FALLBACK),
        )

    async def GetModelInfo(self, request, context):
        return gateway_service_pb2.GetModelInfoResponse(model_name="fake", max_context_tokens=128, vocab_size=32000)


class FakeEngine(engine_service_pb2_grpc.EngineServiceServicer):
    def __init__(self) -> None:
        self.requests: list[engine_service_pb2.EngineServiceGenerateRequest] = []

    async def Generate(self, request, context):
        self.requests.append(request)
        for index in range(request.sampling.max_tokens):
            yield engine_service_pb2.EngineServiceGenerateResponse(token_ids=[100 + index])
        yield engine_service_pb2.EngineServiceGenerateResponse(finish_reason=common_pb2.FINISH_REASON_LENGTH)

    async def GetModelInfo(self, request, context):
        return engine_service_pb2.EngineServiceGetModelInfoResponse(
            model_name="fake", max_context_tokens=128, vocab_size=32000, eos_token_id=2, tokenizer="default"
        )

    async def GetStats(self, request, context):
        return engine_service_pb2.EngineServiceGetStatsResponse(engine_id="fake-0", scheduler_policy="fcfs")


@pytest.fixture
def fake_stack():
    """(address, gateway servicer, engine servicer) of one server hosting both services."""
    gateway, engine = FakeGateway(), FakeEngine()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def register(server):
        gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(gateway, server)
        engine_service_pb2_grpc.add_EngineServiceServicer_to_server(engine, server)

    running = asyncio.run_coroutine_threadsafe(
        start_server(
            host="127.0.0.1",
            port=0,
            register=register,
            service_names=["alise.v1.GatewayService", "alise.v1.EngineService"],
        ),
        loop,
    ).result(timeout=10)
    yield running.address, gateway, engine
    asyncio.run_coroutine_threadsafe(running.stop(0), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def test_generate_streams_text_to_stdout_and_summary_to_stderr(fake_stack, capsys):
    address, gateway, _ = fake_stack
    status = cli_main.main(["generate", "Say hi", "--address", address, "--max-tokens", "4", "--seed", "3"])
    captured = capsys.readouterr()
    assert status == 0
    assert captured.out == "Hello, world!\n"
    assert "finish=LENGTH prompt_tokens=2 completion_tokens=4 ttft_ms=" in captured.err
    assert "predicted_tokens=9.0(fallback)" in captured.err
    assert gateway.requests[0].prompt_text == "Say hi" and gateway.requests[0].sampling.seed == 3


def test_generate_reports_grpc_errors_with_status(fake_stack, capsys):
    address, _, _ = fake_stack
    status = cli_main.main(["generate", "bad", "--address", address])
    assert status == 1
    assert capsys.readouterr().err.strip() == "alise generate: error: INVALID_ARGUMENT: prompt is not acceptable"


def test_generate_reports_an_unreachable_gateway(capsys):
    status = cli_main.main(["generate", "hi", "--address", "127.0.0.1:1", "--timeout-s", "2"])
    assert status == 1
    assert capsys.readouterr().err.startswith("alise generate: error: UNAVAILABLE: ")


def test_bench_stack_measures_both_paths_and_saves_json(fake_stack, tmp_path, capsys):
    address, gateway, engine = fake_stack
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "stack",
        "--gateway-address",
        address,
        "--engine-address",
        address,
        "--concurrency",
        "1",
        "3",
        "--max-tokens",
        "8",
        "--requests-per-stream",
        "1",
        "--num-requests",
        "4",
        "--num-warmup",
        "1",
        "--out",
        str(out),
    ]
    assert cli_main.main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "git", "config", "model", "throughput", "gateway_overhead"}
    assert [(row["target"], row["concurrency"]) for row in report["throughput"]] == [
        ("gateway", 1),
        ("gateway", 3),
        ("engine", 1),
        ("engine", 3),
    ]
    assert all(
        row["num_tokens"] == 8 * row["concurrency"] and row["num_requests_short"] == 0 for row in report["throughput"]
    )
    overhead = report["gateway_overhead"]
    assert overhead["num_requests"] == 4 and overhead["end_to_end"]["engine"]["p50_ms"] > 0
    assert report["model"]["scheduler_policy"] == "fcfs"
    # The engine got the same prompt, tokenized with BOS, and fully resolved sampling.
    direct = engine.requests[-1]
    assert direct.prompt_token_ids[0] == 1 and len(direct.prompt_token_ids) == report["model"]["num_prompt_tokens"]
    assert direct.sampling.ignore_eos and direct.sampling.HasField("temperature") and direct.sampling.HasField("seed")
    assert gateway.requests[-1].sampling == direct.sampling
    captured = capsys.readouterr()
    assert "gateway overhead over 4 sequential requests" in captured.out
    # The fake gateway counts words, not tokens: the mismatch is reported, not hidden.
    assert report["model"]["gateway_num_prompt_tokens"] != report["model"]["num_prompt_tokens"]
    assert "warning: gateway counts" in captured.err
