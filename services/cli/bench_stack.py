"""`alise bench stack`: throughput and gateway overhead of a running stack.

Needs both the gateway and the engine address (`alise up` prints both). Prints a table and saves
JSON (machine, git commit, config, model info, figures) to --out. A benchmark, not a test: it
asserts nothing, it measures.

    (a) tokens/s for 1 and 16 concurrent streams (ignore_eos, fixed max_tokens, fixed prompt),
        through the gateway and, for reference, straight to the engine
    (b) gateway added latency: end-to-end and TTFT, p50/p90, gateway minus engine and gateway / engine
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import pathlib
import sys
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import grpc

from services.cli.bench_measure import measure_overhead, measure_throughput
from services.cli.streams import StreamTiming, timed_stream
from services.common import arg_types, run_info
from services.common.cli_errors import print_error
from services.common.contracts import (
    common_pb2,
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
)
from services.common.server import GRPC_OPTIONS

DEFAULT_PROMPT = "Explain in a few sentences why continuous batching raises the throughput of an LLM server."


@dataclass(frozen=True)
class BenchStackConfig:
    """Settings of one `alise bench stack` run (saved with the results)."""

    gateway_address: str  # host:port of the gateway
    engine_address: str  # host:port of the engine behind that gateway
    prompt: str  # the one fixed prompt of every request
    concurrencies: tuple[int, ...]  # client streams per throughput round, e.g. (1, 16)
    throughput_max_tokens: int  # max_tokens (with ignore_eos) of throughput requests
    requests_per_stream: int  # back-to-back requests per client stream in a throughput round
    overhead_num_requests: int  # sequential requests per side for the overhead figures
    overhead_max_tokens: int  # small max_tokens of overhead requests
    num_warmup: int  # unrecorded requests per side before measuring
    seed: int  # sampling seed of every request
    timeout_s: float  # gRPC deadline per request

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError("--prompt must not be empty")
        if not self.concurrencies or min(self.concurrencies) <= 0:
            raise ValueError(f"--concurrency values must be > 0, got {self.concurrencies}")
        for name in ("throughput_max_tokens", "requests_per_stream", "overhead_num_requests", "overhead_max_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.num_warmup < 0 or self.timeout_s <= 0:
            raise ValueError("num_warmup must be >= 0 and timeout_s > 0")


def add_parser(kinds: argparse._SubParsersAction) -> None:
    """Registers `bench stack` and its flags under `alise bench`."""
    parser = kinds.add_parser("stack", help="tokens/s at 1 and 16 streams; latency the gateway adds")
    parser.add_argument("--gateway-address", type=arg_types.address, default="127.0.0.1:50051")
    parser.add_argument("--engine-address", type=arg_types.address, required=True, help="printed by alise up")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the fixed prompt of every request")
    parser.add_argument("--concurrency", type=arg_types.positive_int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=arg_types.positive_int, default=64, help="throughput requests")
    parser.add_argument("--requests-per-stream", type=arg_types.positive_int, default=2)
    parser.add_argument("--num-requests", type=arg_types.positive_int, default=50, help="overhead, per side")
    parser.add_argument("--overhead-max-tokens", type=arg_types.positive_int, default=4)
    parser.add_argument("--num-warmup", type=arg_types.non_negative_int, default=3)
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    parser.add_argument("--timeout-s", type=arg_types.positive_float, default=600.0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/bench_stack.json"))
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> BenchStackConfig:
    return BenchStackConfig(
        gateway_address=args.gateway_address,
        engine_address=args.engine_address,
        prompt=args.prompt,
        concurrencies=tuple(args.concurrency),
        throughput_max_tokens=args.max_tokens,
        requests_per_stream=args.requests_per_stream,
        overhead_num_requests=args.num_requests,
        overhead_max_tokens=args.overhead_max_tokens,
        num_warmup=args.num_warmup,
        seed=args.seed,
        timeout_s=args.timeout_s,
    )


def _sampling(max_tokens: int, seed: int) -> common_pb2.SamplingParams:
    """Fully resolved sampling (what the engine requires), identical on both paths."""
    return common_pb2.SamplingParams(
        max_tokens=max_tokens, temperature=1.0, top_p=1.0, top_k=0, seed=seed, ignore_eos=True
    )


class StackClients:
    """One channel to the gateway and one to the engine, and a stream maker for each."""

    def __init__(self, config: BenchStackConfig) -> None:
        self._config = config
        self.gateway_channel = grpc.aio.insecure_channel(config.gateway_address, options=GRPC_OPTIONS)
        self.engine_channel = grpc.aio.insecure_channel(config.engine_address, options=GRPC_OPTIONS)
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(self.gateway_channel)
        self.engine = engine_service_pb2_grpc.EngineServiceStub(self.engine_channel)
        self.prompt_token_ids: list[int] = []  # set by load_model_info()

    async def load_model_info(self) -> dict[str, Any]:
        """Model facts from both services; tokenizes the prompt as the engine's tokenizer does."""
        from google.protobuf import json_format

        from services.common.tokenizer import load_tokenizer

        timeout_s = self._config.timeout_s
        gateway_info = await self.gateway.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=timeout_s)
        engine_info = await self.engine.GetModelInfo(
            engine_service_pb2.EngineServiceGetModelInfoRequest(), timeout=timeout_s
        )
        engine_stats = await self.engine.GetStats(engine_service_pb2.EngineServiceGetStatsRequest(), timeout=timeout_s)
        tokenizer = load_tokenizer(engine_info.tokenizer or "default")
        self.prompt_token_ids = tokenizer.encode(self._config.prompt, add_bos=True)
        probe = await self.via_gateway(1)  # the gateway must see the same prompt length as the engine
        gateway_num_prompt_tokens = probe.last_message.usage.prompt_tokens if probe.last_message else None
        if gateway_num_prompt_tokens != len(self.prompt_token_ids):
            print(
                f"warning: gateway counts {gateway_num_prompt_tokens} prompt tokens, the engine path "
                f"{len(self.prompt_token_ids)}: the overhead figures compare unequal prompts",
                file=sys.stderr,
            )
        return {
            "gateway": json_format.MessageToDict(gateway_info),
            "engine": json_format.MessageToDict(engine_info),
            "engine_id": engine_stats.engine_id,
            "scheduler_policy": engine_stats.scheduler_policy,
            "num_prompt_tokens": len(self.prompt_token_ids),
            "gateway_num_prompt_tokens": gateway_num_prompt_tokens,
        }

    async def via_gateway(self, max_tokens: int) -> StreamTiming:
        request = gateway_service_pb2.GenerateRequest(
            request_id=f"bench-g-{uuid.uuid4().hex[:12]}",
            prompt_text=self._config.prompt,
            sampling=_sampling(max_tokens, self._config.seed),
        )
        return await timed_stream(lambda: self.gateway.Generate(request, timeout=self._config.timeout_s))

    async def direct_to_engine(self, max_tokens: int) -> StreamTiming:
        request = engine_service_pb2.EngineServiceGenerateRequest(
            request_id=f"bench-e-{uuid.uuid4().hex[:12]}",
            prompt_token_ids=self.prompt_token_ids,
            sampling=_sampling(max_tokens, self._config.seed),
            priority_class=common_pb2.PRIORITY_CLASS_STANDARD,
        )
        return await timed_stream(lambda: self.engine.Generate(request, timeout=self._config.timeout_s))

    async def close(self) -> None:
        await self.gateway_channel.close()
        await self.engine_channel.close()


async def run_benchmark(config: BenchStackConfig) -> dict[str, Any]:
    """Runs both measurements against a live stack; returns the JSON-ready report."""
    clients = StackClients(config)
    try:
        model = await clients.load_model_info()
        throughput = []
        for target, make_stream in (("gateway", clients.via_gateway), ("engine", clients.direct_to_engine)):
            await make_stream(config.throughput_max_tokens)  # warm this path
            for concurrency in config.concurrencies:
                result = await measure_throughput(
                    make_stream,
                    concurrency=concurrency,
                    requests_per_stream=config.requests_per_stream,
                    max_tokens=config.throughput_max_tokens,
                )
                throughput.append({"target": target, **result})
                print(_throughput_line(throughput[-1]), flush=True)
        overhead = await measure_overhead(
            clients.via_gateway,
            clients.direct_to_engine,
            num_requests=config.overhead_num_requests,
            max_tokens=config.overhead_max_tokens,
            num_warmup=config.num_warmup,
        )
    finally:
        await clients.close()
    return {
        "benchmark": "stack",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": run_info.machine_info(),
        "git": run_info.git_info(),
        "config": asdict(config),
        "model": model,
        "throughput": throughput,
        "gateway_overhead": overhead,
    }


def _throughput_line(row: dict[str, Any]) -> str:
    return (
        f"throughput {row['target']:<8} streams={row['concurrency']:<3} requests={row['num_requests']:<4} "
        f"tokens/s={row['tokens_per_s']:9.1f}  ttft p50={row['ttft']['p50_ms']:8.1f} ms  "
        f"short={row['num_requests_short']}"
    )


def format_overhead(overhead: dict[str, Any]) -> str:
    """Two lines: end-to-end and TTFT, gateway vs engine, p50 and p90."""
    lines = [
        f"gateway overhead over {overhead['num_requests']} sequential requests, max_tokens={overhead['max_tokens']}:"
    ]
    for label in ("end_to_end", "ttft"):
        part = overhead[label]
        lines.append(
            f"  {label:<10} p50 gateway {part['gateway']['p50_ms']:8.2f} ms  engine {part['engine']['p50_ms']:8.2f} ms"
            f"  added {part['added_p50_ms']:+7.2f} ms (x{part['ratio_p50']:.2f})"
            f" | p90 added {part['added_p90_ms']:+7.2f} ms (x{part['ratio_p90']:.2f})"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Runs `alise bench stack`; returns the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        print_error("alise bench stack", str(error))
        return 2
    try:
        report = asyncio.run(run_benchmark(config))
    except grpc.aio.AioRpcError as error:
        print_error("alise bench stack", f"{error.code().name}: {error.details()}")
        return 1
    print(format_overhead(report["gateway_overhead"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    print(f"saved {args.out}")
    return 0
