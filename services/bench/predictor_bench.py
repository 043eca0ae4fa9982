"""`alise predictor bench`: latency and throughput of PredictOutputLength over real gRPC.

Two phases against one predictor (started in this process on 127.0.0.1 port 0, or --address):

1. latency: one caller, one ~100-token prompt per call, `--num-requests` calls in a row:
   p50 / p90 / p99 of the client-side round trip (tokenize + embed + trees + gRPC);
2. throughput: `--concurrency` callers (default 32) each calling in a loop until
   `--num-requests` calls in all: prompts per second, latency under load, and the mean batch the
   micro-batcher formed (from GetStats);
3. stages (in-process server only): the same prompt through each stage of `predict` without
   gRPC (predictor_stages.py), so the table shows where a call's time goes.

Prints a table and saves JSON (machine, git commit, config, figures). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np

from services.predictor.config import DEFAULT_MODEL_DIR
from services.predictor.lone_prompt import AUTO

# ~100 tokens of ordinary English request text: 103 MiniLM word pieces ([CLS], [SEP] included) and
# 105 tokens of the served model's Mistral tokenizer.
_PROMPT = (
    "I am preparing a short presentation for my team about how our customer support process works. "
    "Please explain the main steps a support ticket goes through, from the moment a customer writes "
    "to us until the issue is resolved, and suggest three ways we could make the process faster "
    "without hiring more people. Keep the tone friendly and practical, and mention any common "
    "mistakes new team members make. If you can, end with a two-sentence summary that I could put on "
    "the last slide of the deck. Request number {index}."
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `bench` under `alise predictor`."""
    bench = commands.add_parser("bench", help="latency and throughput of the predictor service (JSON)")
    bench.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model to serve")
    bench.add_argument("--address", default="", help="bench a running predictor instead (host:port)")
    bench.add_argument("--num-requests", type=int, default=300, help="calls per phase")
    bench.add_argument("--concurrency", type=int, default=32, help="concurrent callers in phase 2")
    bench.add_argument("--embedding-threads", type=int, default=2, help="in-process server: embedding threads")
    bench.add_argument(
        "--lone-prompt-threads",
        type=int,
        default=AUTO,
        help="in-process server: threads of a lone prompt (0 = measured at load, as the service does)",
    )
    bench.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default ~/.cache/alise)")
    bench.add_argument("--out", type=Path, default=Path("runs") / "predictor" / "bench.json", help="JSON output")
    bench.set_defaults(handler=run_bench)


def _request(index: int):
    from services.common.contracts import predictor_service_pb2

    text = _PROMPT.format(index=index)
    return predictor_service_pb2.PredictOutputLengthRequest(
        inputs=[predictor_service_pb2.PredictionInput(prompt_text=text, num_prompt_tokens=100)]
    )


def _percentiles(latencies_s: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_s) * 1e3
    return {f"p{q}_ms": round(float(np.percentile(values, q)), 3) for q in (50, 90, 99)}


async def _latency_phase(stub, num_requests: int) -> dict:
    """Round trips of one caller; also this process's CPU time per call (client + in-process server),
    a figure that other work on a shared machine does not inflate the way it inflates wall time."""
    latencies = []
    cpu_started = time.process_time()
    for index in range(num_requests):
        started = time.perf_counter()
        await stub.PredictOutputLength(_request(index), timeout=10)
        latencies.append(time.perf_counter() - started)
    cpu_ms_per_call = (time.process_time() - cpu_started) * 1e3 / num_requests
    return {
        "num_requests": num_requests,
        **_percentiles(latencies),
        "process_cpu_ms_per_call": round(cpu_ms_per_call, 3),
    }


async def _throughput_phase(stub, num_requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    counter = iter(range(num_requests))

    async def caller() -> None:
        for index in counter:
            started = time.perf_counter()
            await stub.PredictOutputLength(_request(index), timeout=30)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed_s = time.perf_counter() - started
    return {
        "num_requests": num_requests,
        "concurrency": concurrency,
        "prompts_per_s": round(num_requests / elapsed_s, 1),
        **_percentiles(latencies),
    }


async def _bench(args: argparse.Namespace, address: str) -> dict:
    import grpc

    from services.common.contracts import predictor_service_pb2, predictor_service_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = predictor_service_pb2_grpc.PredictorServiceStub(channel)
        stats_request = predictor_service_pb2.PredictorServiceGetStatsRequest()
        await stub.PredictOutputLength(_request(-1), timeout=30)  # warm-up
        latency = await _latency_phase(stub, args.num_requests)
        before = await stub.GetStats(stats_request, timeout=10)
        throughput = await _throughput_phase(stub, args.num_requests, args.concurrency)
        after = await stub.GetStats(stats_request, timeout=10)
    num_batches = max(after.num_batches - before.num_batches, 1)
    throughput["mean_batch_prompts"] = round((after.num_predictions - before.num_predictions) / num_batches, 2)
    return {
        "model_version": after.model_version,
        "providers": list(after.execution_providers),
        "latency_one_caller": latency,
        "throughput": throughput,
    }


async def _bench_in_process(args: argparse.Namespace) -> dict:
    from services.bench.predictor_stages import measure_stages
    from services.predictor import app
    from services.predictor.config import PredictorConfig

    config = PredictorConfig(
        port=0,
        model_dir=args.model_dir,
        cache_dir=args.cache_dir,
        embedding_threads=args.embedding_threads,
        lone_prompt_threads=args.lone_prompt_threads,
        reload_poll_interval_s=0,
    )
    handle = await app.start(config)
    try:
        figures = await _bench(args, handle.address)
    finally:
        await handle.stop(0)
    predictor = handle.holder.current
    figures["stages"] = measure_stages(predictor, _PROMPT.format(index=0), 100, min(args.num_requests, 100))
    if predictor.embedder is not None:
        figures["embedding_version"] = predictor.embedder.spec.version
        figures["lone_prompt_threads"] = predictor.embedder.lone_prompt_threads
    return figures


def run_bench(args: argparse.Namespace) -> int:
    """Runs both phases, prints the figures, writes the JSON."""
    from services.common.run_info import git_info, machine_info

    load_before = os.getloadavg()[0]  # a shared machine: other work inflates latency
    figures = asyncio.run(_bench(args, args.address) if args.address else _bench_in_process(args))
    figures["load_average_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    latency, throughput = figures["latency_one_caller"], figures["throughput"]
    print(f"model {figures['model_version']} on {figures['providers']}")
    print(
        f"one caller, ~100-token prompt: p50 {latency['p50_ms']} ms  p90 {latency['p90_ms']} ms  "
        f"p99 {latency['p99_ms']} ms  ({latency['num_requests']} calls; "
        f"{latency['process_cpu_ms_per_call']} ms CPU per call)"
    )
    print(
        f"{throughput['concurrency']} callers: {throughput['prompts_per_s']} prompts/s  "
        f"p50 {throughput['p50_ms']} ms  p99 {throughput['p99_ms']} ms  "
        f"mean batch {throughput['mean_batch_prompts']} prompts"
    )
    if "stages" in figures:
        from services.bench.predictor_stages import format_stages

        print("stages of one call, in process (no gRPC):")
        print("\n".join(format_stages(figures["stages"], latency)))
    print(f"1-minute load average of this machine: {figures['load_average_1m']} on {os.cpu_count()} cores")
    report = {
        **figures,
        "config": {
            "address": args.address or "in-process 127.0.0.1:0",
            "model_dir": str(args.model_dir),
            "embedding_threads": args.embedding_threads,
            "lone_prompt_threads": args.lone_prompt_threads,
            "num_requests": args.num_requests,
        },
        "machine": machine_info(),
        "git": git_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0
