"""The phases of `alise bench chaos`; each starts the stack it needs, runs, stops it, returns figures."""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import pathlib
import signal
import time
from typing import Awaitable, Callable

import grpc

from services.bench.chaos_aborts import abort_storm
from services.bench.chaos_contention import ContentionProbe
from services.bench.chaos_faults import EngineRecovery, MemoryRecovery, PredictorRecovery, run_fault
from services.bench.chaos_load import ClosedLoopLoad, LoadShape, StreamOutcome, count_codes, run_stream
from services.bench.chaos_overload import burst, deadline_burst, health_burst, paced_outcomes, paced_overload
from services.bench.chaos_stack import ENGINE_ARGS, ChaosStack, ChaosStackConfig
from services.bench.chaos_up import UpStack, kill_gateway_under_load
from services.bench.cpu_pinning import all_cpus, own_core_split, pin_process, split_own_core
from services.common.contracts import common_pb2, engine_service_pb2, engine_service_pb2_grpc

OVERLOAD_TOKENS = 32  # max_tokens of every overload request (ignore_eos: each costs the same)
# The overload gateway's --max-queued-work-s (bench chaos --overload-max-queued-work-s): predicted work
# waiting to start (the running batch not counted). Small: a request admitted behind queued work waits
# for a batch slot, not for that work at the batch's throughput, and at 20x slots free in cohorts (the
# admitted requests started together), so the wait grows far past the bound. Measured side by side at
# 200 req/s (20x, load 12-14): bound 0.5 s -> admitted TTFT p99 1.34 s (1x: 0.28 s), 0.1 s -> 0.55 s,
# 0.05 s -> 0.16 s (1x: 0.08 s), with more requests admitted (153 / 171 / 193 of 2,000).
OVERLOAD_MAX_QUEUED_WORK_S = 0.05


async def _with_stack(config: ChaosStackConfig, body: Callable[[ChaosStack], Awaitable[dict]]) -> dict:
    stack = ChaosStack(config)
    await stack.start()
    try:
        return await body(stack)
    finally:
        await stack.stop()


async def kills(args: argparse.Namespace, log_dir: pathlib.Path) -> dict:
    async def body(stack: ChaosStack) -> dict:
        load = ClosedLoopLoad(stack.gateway_stub(), LoadShape(concurrency=16)).start()
        results = [
            await run_fault(stack, load, "predictor", observe_s=2.0, recovery=PredictorRecovery()),
            await run_fault(stack, load, "memory", observe_s=2.0, recovery=MemoryRecovery()),
            await run_fault(stack, load, "engine-1", observe_s=2.0, recovery=EngineRecovery("engine-1")),
        ]
        outcomes = await load.stop()
        return {"faults": [r.to_json() for r in results], "load_codes": count_codes(outcomes)}

    figures = await _with_stack(ChaosStackConfig(log_dir=log_dir), body)
    up = UpStack(log_dir / "alise-up")  # the gateway, killed behind a real `alise up`
    try:
        await up.start()
        figures["gateway_behind_alise_up"] = (await kill_gateway_under_load(up)).to_json()
    finally:
        await up.stop()
    return figures


async def _capacity(stack: ChaosStack, duration_s: float) -> float:
    """Completed requests per second with the batch kept full (closed loop, 16 streams)."""
    shape = LoadShape(
        concurrency=16,
        min_tokens=OVERLOAD_TOKENS,
        max_tokens=OVERLOAD_TOKENS,
        min_words=12,
        max_words=12,
        retry_pause_s=0.01,  # a small --max-queued-work-s refuses some: no busy loop on the refusals
    )
    load = ClosedLoopLoad(stack.gateway_stub(), shape).start()
    await asyncio.sleep(2.0)  # warm-up
    began_s, done_before = time.monotonic(), sum(o.ended_s > 0 and o.code == "OK" for o in load.outcomes)
    await asyncio.sleep(duration_s)
    done = sum(o.ended_s > 0 and o.code == "OK" for o in load.outcomes) - done_before  # refusals never count
    rate = done / (time.monotonic() - began_s)
    await load.stop()
    return rate


def engine_on_own_core(stack: ChaosStack) -> None:
    """The stack's engine-0 on a CPU core of its own, its other children on the rest (cpu_pinning);
    the load generator (this process) pins itself to the rest where it needs to."""
    others = [child.pid for name, child in stack.children.items() if name != "engine-0"]
    split_own_core(stack.children["engine-0"].pid, others)


async def saturated_capacity(stack: ChaosStack, closed_loop_per_s: float, duration_s: float = 12.0) -> float:
    """Completions per second while 4x the closed-loop rate arrives and admission sheds the rest: the
    engine's throughput with its batch kept full, the honest 100% load (the closed loop leaves seats idle
    while its streams' requests travel). Counts completions from 2 s in to the last arrival."""
    outcomes = await paced_outcomes(
        stack.gateway_stub(),
        rate_per_s=4.0 * closed_loop_per_s,
        duration_s=duration_s,
        max_tokens=OVERLOAD_TOKENS,
        timeout_s=60.0,
    )
    began_s = min(o.started_s for o in outcomes) + 2.0
    ended_s = max(o.started_s for o in outcomes)
    done = sum(o.code == "OK" and began_s <= o.ended_s <= ended_s for o in outcomes)
    return done / (ended_s - began_s)


async def overload(args: argparse.Namespace, log_dir: pathlib.Path) -> dict:
    async def body(stack: ChaosStack) -> dict:
        stub = stack.gateway_stub()
        if args.overload_engine_own_core:  # as separate pods: the refusals' CPU is not the engine's
            engine_on_own_core(stack)
            pin_process(os.getpid(), own_core_split()[1])
        closed_loop = await _capacity(stack, 10.0)
        capacity = await saturated_capacity(stack, closed_loop) if closed_loop > 0 else 0.0
        levels = {}
        for multiple in (1.0, 4.0, 20.0):
            rss_before = stack.rss_bytes("engine-0")
            gateway_cpu_before_s = stack.cpu_s("gateway")
            pids = {name: stack.children[name].pid for name in ("gateway", "engine-0")}
            probe = ContentionProbe({**pids, "client": os.getpid()}).start()
            result = await paced_overload(
                stub,
                rate_per_s=capacity * multiple,
                duration_s=args.overload_s,
                max_tokens=OVERLOAD_TOKENS,
                timeout_s=60.0,
            )
            contention = await probe.stop()
            gateway_cpu_s = stack.cpu_s("gateway") - gateway_cpu_before_s
            levels[f"{multiple:g}x"] = {
                **result.to_json(),
                "rate_per_s": capacity * multiple,
                "engine_rss_growth": stack.rss_bytes("engine-0") / rss_before - 1.0,
                # what one request cost the gateway on average, whatever else the machine runs
                "gateway_cpu_ms_per_request": gateway_cpu_s * 1e3 / result.num_requests,
                "contention": contention,
            }
        pin_process(os.getpid(), all_cpus())  # the next phases' load generator runs anywhere again
        return {
            "capacity_requests_per_s": capacity,  # saturated: 1x = the engine's throughput with a full batch
            "closed_loop_capacity_requests_per_s": closed_loop,
            "engine_own_core": args.overload_engine_own_core,
            "levels": levels,
            "burst_1000": (await burst(stub, 1000, max_tokens=8, timeout_s=120.0)).to_json(),
            "health_checks_5000": await health_burst(stack.channel("gateway"), 5000),
        }

    config = ChaosStackConfig(
        log_dir=log_dir,
        num_engines=1,
        with_predictor=False,
        gateway_in_process=False,
        gateway_args=("--max-in-flight-requests", "256", "--max-queued-work-s", repr(args.overload_max_queued_work_s)),
        engine_args=(
            *ENGINE_ARGS,
            "--max-waiting-requests",
            "64",
            "--max-queue-wait-steps",
            repr(args.overload_max_queue_wait_steps),
        ),
    )
    return await _with_stack(config, body)


async def deadline(args: argparse.Namespace, log_dir: pathlib.Path) -> dict:
    async def body(stack: ChaosStack) -> dict:
        result = await deadline_burst(
            stack.gateway_stub(),
            num_background=48,
            background_tokens=400,
            num_probes=100,
            probe_tokens=300,
            probe_deadline_s=1.0,
        )
        return result.to_json()

    config = ChaosStackConfig(log_dir=log_dir, num_engines=1, with_predictor=False)
    return await _with_stack(config, body)


async def aborts(args: argparse.Namespace, log_dir: pathlib.Path) -> dict:
    async def body(stack: ChaosStack) -> dict:
        return (await abort_storm(stack, num_streams=args.aborts, concurrency=32, max_delay_s=1.5)).to_json()

    config = ChaosStackConfig(
        log_dir=log_dir,
        num_engines=1,
        with_predictor=False,
        engine_args=(*ENGINE_ARGS, "--num-kv-blocks", "40", "--deadline-admission-slack", "0"),
    )
    return await _with_stack(config, body)


async def huge(args: argparse.Namespace, log_dir: pathlib.Path) -> dict:
    """8 MB and 60 MB prompts to a gateway process: time to the refusal, its RSS before, right after, 2 s later."""

    async def body(stack: ChaosStack) -> dict:
        figures = {}
        for megabytes in (8, 60):
            rss_before = stack.rss_bytes("gateway")
            outcome = StreamOutcome(0, "lorem ipsum " * (megabytes * 1024 * 1024 // 12), 16, 0, time.monotonic())
            await run_stream(stack.gateway_stub(), outcome, timeout_s=120.0)
            rss_after = stack.rss_bytes("gateway")
            await asyncio.sleep(2.0)
            figures[f"{megabytes}_mb"] = {
                "code": outcome.code,
                "details": outcome.details,
                "seconds": outcome.duration_s,
                "gateway_rss_before_mb": rss_before / 2**20,
                "gateway_rss_after_mb": rss_after / 2**20,
                "gateway_rss_2s_later_mb": stack.rss_bytes("gateway") / 2**20,
            }
        return figures

    config = ChaosStackConfig(log_dir=log_dir, num_engines=1, with_predictor=False, gateway_in_process=False)
    return await _with_stack(config, body)


async def drain(args: argparse.Namespace, log_dir: pathlib.Path) -> dict:
    """SIGTERM to an engine (drain 2 s) with 4 short and 4 long streams in flight, then a new call."""

    async def body(stack: ChaosStack) -> dict:
        engine = engine_service_pb2_grpc.EngineServiceStub(stack.channel("engine-0"))
        calls = [asyncio.create_task(_engine_call(engine, f"r{i}", 24 if i < 4 else 1900)) for i in range(8)]
        await asyncio.sleep(0.5)
        os.kill(stack.children["engine-0"].pid, signal.SIGTERM)
        signalled_s = time.monotonic()
        await asyncio.sleep(0.2)
        new_code, _ = await _engine_call(engine, "new", 4)
        results = await asyncio.gather(*calls)
        status = await asyncio.wait_for(stack.wait_exit("engine-0"), 30.0)
        return {
            "drain_s": 2.0,
            "short_codes": dict(collections.Counter(code for code, _ in results[:4])),
            "long_codes": dict(collections.Counter(code for code, _ in results[4:])),
            "long_details": results[-1][1],
            "new_call_code": new_code,
            "exit_status": status,
            "exited_after_s": time.monotonic() - signalled_s,
        }

    config = ChaosStackConfig(
        log_dir=log_dir,
        num_engines=1,
        with_predictor=False,
        drain_s=2.0,
        engine_args=(*ENGINE_ARGS, "--num-kv-blocks", "1024", "--deadline-admission-slack", "0"),
    )
    return await _with_stack(config, body)


async def _engine_call(engine, request_id: str, max_tokens: int) -> tuple[str, str]:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=1, ignore_eos=True)
    request = engine_service_pb2.EngineServiceGenerateRequest(
        request_id=request_id, prompt_token_ids=[1, 415, 2936, 9060], sampling=sampling
    )
    try:
        async for _ in engine.Generate(request, timeout=60.0):
            pass
    except grpc.aio.AioRpcError as error:
        return error.code().name, error.details() or ""
    return "OK", ""


async def fuzz(args: argparse.Namespace, log_dir: pathlib.Path) -> dict:
    from services.bench.chaos_fuzz_run import fuzz_all  # hypothesis: only when this phase runs

    return await asyncio.to_thread(fuzz_all, args.fuzz_cases, log_dir)


PHASES: dict[str, Callable[[argparse.Namespace, pathlib.Path], Awaitable[dict]]] = {
    "kills": kills,
    "overload": overload,
    "deadline": deadline,
    "aborts": aborts,
    "huge": huge,
    "drain": drain,
    "fuzz": fuzz,
}


async def run_phase(name: str, args: argparse.Namespace, log_dir: pathlib.Path) -> dict:
    log_dir.mkdir(parents=True, exist_ok=True)
    return await PHASES[name](args, log_dir)
