"""`alise bench http`: what the OpenAI-compatible HTTP API costs over gRPC, and what one HTTP stream carries.

    fast fake engine (process) <- gateway (process, gRPC + HTTP) <- clients (this process)

Both APIs are measured side by side in one run against the same gateway, requests interleaved
(gRPC, HTTP, HTTP-stream, then the reverse order) so drift of a shared machine hits all alike:

    (a) latency of one 16-token request, end to end at the client, p50/p90/p99 per API:
        gRPC Generate (stream read to the end), HTTP /v1/completions (one JSON body), and the same
        with stream=true (server-sent events read to [DONE]); overhead = HTTP p50 - gRPC p50
    (b) tokens/s of one long streamed request per API (one connection, one stream)

Clients: grpc.aio, and httpx2 (the HTTP library of the `openai` SDK) with a kept-alive connection.
Prints a table and saves JSON (machine, commit, config, figures) to --out. Measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import pathlib
import socket
import sys
import tempfile
import time
from typing import Awaitable, Callable

import grpc

from services.cli.bench_measure import summarize_ms
from services.cli.child import ChildProcess
from services.cli.stack_plan import ChildSpec
from services.common import arg_types, run_info
from services.common.contracts import common_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from services.common.health import wait_until_serving

PROMPT = "Explain in a few sentences why continuous batching raises the throughput of an LLM server."
Request = Callable[[int], Awaitable[int]]  # runs one request of max_tokens; returns the tokens received


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("http", help="HTTP (OpenAI API) vs gRPC latency and one stream's tokens/s")
    parser.add_argument("--num-requests", type=arg_types.positive_int, default=300, help="per API, latency")
    parser.add_argument("--max-tokens", type=arg_types.positive_int, default=16, help="tokens of a latency request")
    parser.add_argument(
        "--stream-tokens", type=arg_types.positive_int, default=20_000, help="tokens of the long stream"
    )
    parser.add_argument("--num-warmup", type=arg_types.non_negative_int, default=20)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/http_overhead.json"))
    parser.set_defaults(handler=run)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _start_children(log_dir: pathlib.Path) -> tuple[list[ChildProcess], str, str]:
    """The fake engine and a gateway in front of it; returns (children, gRPC address, HTTP base URL)."""
    python = sys.executable
    engine = ChildProcess(
        ChildSpec("fake-engine", (python, "-m", "services.bench.fake_engine")), log_dir / "engine.log"
    )
    await engine.start({})
    engine_address = await asyncio.wait_for(engine.wait_ready(), timeout=60)
    http_port = _free_port()
    gateway_argv = (
        python,
        "-m",
        "services.gateway",
        "--port",
        "0",
        "--http-port",
        str(http_port),
        "--engine-address",
        engine_address,
        "--log-level",
        "WARNING",
        "--drain-seconds",
        "0",
    )
    gateway = ChildProcess(ChildSpec("gateway", gateway_argv), log_dir / "gateway.log")
    await gateway.start({})
    gateway_address = await asyncio.wait_for(gateway.wait_ready(), timeout=60)
    await wait_until_serving(gateway_address, timeout_s=30)
    return [gateway, engine], gateway_address, f"http://127.0.0.1:{http_port}"


def _grpc_request(stub: gateway_service_pb2_grpc.GatewayServiceStub) -> Request:
    async def run(max_tokens: int) -> int:
        sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        request = gateway_service_pb2.GenerateRequest(prompt_text=PROMPT, sampling=sampling)
        return sum([len(message.token_ids) async for message in stub.Generate(request, timeout=60)])

    return run


def _http_request(client, *, stream: bool) -> Request:
    async def run(max_tokens: int) -> int:
        body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
        if not stream:
            response = await client.post("/v1/completions", json=body)
            response.raise_for_status()
            return response.json()["usage"]["completion_tokens"]
        body.update(stream=True, stream_options={"include_usage": True})
        num_tokens = 0
        async with client.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"usage":{' in line:
                    num_tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        return num_tokens

    return run


async def _latencies(requests: dict[str, Request], *, num_requests: int, max_tokens: int) -> dict[str, list[float]]:
    """End-to-end seconds per API, interleaved forward and backward to spread drift evenly."""
    names = list(requests)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    for index in range(num_requests):
        for name in names if index % 2 == 0 else reversed(names):
            began_s = time.perf_counter()
            num_tokens = await requests[name](max_tokens)
            latencies[name].append(time.perf_counter() - began_s)
            if num_tokens != max_tokens:
                raise RuntimeError(f"{name}: got {num_tokens} tokens, expected {max_tokens}")
    return latencies


async def _stream_rate(request: Request, num_tokens: int) -> dict[str, float]:
    began_s = time.perf_counter()
    received = await request(num_tokens)
    elapsed_s = time.perf_counter() - began_s
    return {"num_tokens": received, "seconds": elapsed_s, "tokens_per_s": received / elapsed_s}


async def _measure(args: argparse.Namespace) -> dict:
    import httpx2

    with tempfile.TemporaryDirectory(prefix="alise-bench-http-") as log_dir:
        children, address, base_url = await _start_children(pathlib.Path(log_dir))
        try:
            async with (
                grpc.aio.insecure_channel(address) as channel,
                httpx2.AsyncClient(base_url=base_url, timeout=120) as client,
            ):
                requests = {
                    "grpc": _grpc_request(gateway_service_pb2_grpc.GatewayServiceStub(channel)),
                    "http": _http_request(client, stream=False),
                    "http_stream": _http_request(client, stream=True),
                }
                await _latencies(requests, num_requests=args.num_warmup, max_tokens=args.max_tokens)
                latencies = await _latencies(requests, num_requests=args.num_requests, max_tokens=args.max_tokens)
                rates = {
                    name: await _stream_rate(requests[name], args.stream_tokens) for name in ("grpc", "http_stream")
                }
        finally:
            for child in children:
                await child.stop(10)
    summaries = {name: summarize_ms(values) for name, values in latencies.items()}
    overhead = {name: summaries[name]["p50_ms"] - summaries["grpc"]["p50_ms"] for name in ("http", "http_stream")}
    return {"latency": summaries, "http_overhead_p50_ms": overhead, "stream_rate": rates}


def run(args: argparse.Namespace) -> int:
    figures = asyncio.run(_measure(args))
    report = {
        "benchmark": "alise bench http",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": run_info.machine_info(),
        "git": run_info.git_info(),
        "config": {
            "num_requests": args.num_requests,
            "max_tokens": args.max_tokens,
            "stream_tokens": args.stream_tokens,
            "num_warmup": args.num_warmup,
            "engine": "services.bench.fake_engine (no model work)",
            "prompt": PROMPT,
        },
        **figures,
    }
    print(f"latency of one {args.max_tokens}-token request (end to end at the client, ms):")
    for name, summary in figures["latency"].items():
        print(f"  {name:<12} p50 {summary['p50_ms']:7.3f}  p90 {summary['p90_ms']:7.3f}  p99 {summary['p99_ms']:7.3f}")
    for name, overhead_ms in figures["http_overhead_p50_ms"].items():
        print(f"  {name} - grpc, p50: {overhead_ms:+.3f} ms")
    for name, rate in figures["stream_rate"].items():
        print(f"one {name} stream: {rate['tokens_per_s']:,.0f} tokens/s ({rate['num_tokens']} tokens)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0
