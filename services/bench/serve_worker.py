"""One load-generating client process of `alise bench serve` (`python -m services.bench.serve_worker`).

A single asyncio client saturates at high rates, so the load comes from several of these
processes, each sending its share of the arrivals over its own gRPC channel. Protocol over the
pipes (one JSON object per line):

    parent -> stdin    {"gateway_address", "timeout_s", "requests": [{request_id, arrival_s,
                        prompt_token_ids, chat_text, max_tokens, seed}, ...]}      (arrival_s from the start)
                       (+ "concurrency": N for a closed loop: N in flight, arrival_s only orders them)
    stdout -> parent   READY                      (channel connected)
    parent -> stdin    {"start_monotonic_s": T}   (the one start time all processes share)
    stdout -> parent   {"results": [...], "cpu_s": ..., "wall_s": ...}

Times are time.monotonic(), which on Linux is CLOCK_MONOTONIC, one clock for every process of the
machine. A dispatcher sleeps until each request is due, then starts its stream as a task (vLLM's
way), so a slow stream never delays the next send; how late each send was is reported (send lag).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import grpc

from services.cli.child_exec import die_with_parent
from services.common.contracts import common_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from services.common.server import GRPC_OPTIONS

READY_LINE = "READY"
CONNECT_TIMEOUT_S = 30.0


def generate_request(request: dict[str, Any]) -> gateway_service_pb2.GenerateRequest:
    """Token ids generated to exactly max_tokens (ignore_eos), or a chat message answered until EOS
    (temperature 0.2, top-p 0.9: SmolLM2's model card settings, as `alise collect-lengths` uses)."""
    chat_text = request.get("chat_text", "")
    sampling = common_pb2.SamplingParams(
        max_tokens=request["max_tokens"],
        temperature=0.2 if chat_text else 1.0,
        top_p=0.9 if chat_text else 1.0,
        seed=request["seed"],
        ignore_eos=not chat_text,
    )
    message = gateway_service_pb2.GenerateRequest(request_id=request["request_id"], sampling=sampling)
    if chat_text:
        message.messages.add(role=common_pb2.CHAT_ROLE_USER, content=chat_text)
    else:
        message.prompt_token_ids.extend(request["prompt_token_ids"])
    return message


async def send_one(
    stub: gateway_service_pb2_grpc.GatewayServiceStub, request: dict[str, Any], scheduled_s: float, timeout_s: float
) -> dict[str, Any]:
    """Streams one request to the end; returns its client-side timings (never raises an RPC error)."""
    message = generate_request(request)
    sent_s = time.monotonic()
    first_token_s = None
    num_output_tokens = 0
    last = None
    error = None
    try:
        async for response in stub.Generate(message, timeout=timeout_s):
            if response.token_ids and first_token_s is None:
                first_token_s = time.monotonic()
            num_output_tokens += len(response.token_ids)
            last = response
    except grpc.aio.AioRpcError as rpc_error:
        error = f"{rpc_error.code().name}: {rpc_error.details()}"
    return {
        "request_id": request["request_id"],
        "scheduled_s": scheduled_s,
        "sent_s": sent_s,
        "first_token_s": first_token_s,
        "finish_s": time.monotonic(),
        "num_prompt_tokens": last.usage.prompt_tokens if last is not None else len(request["prompt_token_ids"]),
        "num_output_tokens": num_output_tokens,
        "num_preemptions": last.timings.num_preemptions if last is not None else 0,
        "error": error,
    }


async def dispatch(
    stub: gateway_service_pb2_grpc.GatewayServiceStub, job: dict[str, Any], start_s: float
) -> list[dict[str, Any]]:
    """Sends each request when due (sorted by arrival); waits for all streams to end."""
    tasks = []
    for request in sorted(job["requests"], key=lambda item: item["arrival_s"]):
        scheduled_s = start_s + request["arrival_s"]
        delay_s = scheduled_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        tasks.append(asyncio.create_task(send_one(stub, request, scheduled_s, job["timeout_s"])))
    return list(await asyncio.gather(*tasks))


async def dispatch_closed_loop(
    stub: gateway_service_pb2_grpc.GatewayServiceStub, job: dict[str, Any], start_s: float
) -> list[dict[str, Any]]:
    """Closed loop: job["concurrency"] streams in flight from the start, each replaced by the next
    request (in arrival order) the moment it ends, until the list is exhausted. A request is due
    when a slot frees, so its scheduled time is that moment (no send lag by construction)."""
    pending = iter(sorted(job["requests"], key=lambda item: item["arrival_s"]))
    results: list[dict[str, Any]] = []

    async def slot() -> None:
        for request in pending:  # one shared iterator: each request goes to exactly one slot
            results.append(await send_one(stub, request, time.monotonic(), job["timeout_s"]))

    delay_s = start_s - time.monotonic()
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    await asyncio.gather(*(slot() for _ in range(job["concurrency"])))
    return results


async def _serve_job(job: dict[str, Any]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(job["gateway_address"], options=GRPC_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        print(READY_LINE, flush=True)
        start_line = await asyncio.to_thread(sys.stdin.readline)
        start_s = float(json.loads(start_line)["start_monotonic_s"])
        cpu_began_s, wall_began_s = time.process_time(), time.monotonic()
        closed_loop = job.get("concurrency") is not None
        results = await (dispatch_closed_loop if closed_loop else dispatch)(stub, job, start_s)
        return {
            "results": results,
            "cpu_s": time.process_time() - cpu_began_s,
            "wall_s": time.monotonic() - wall_began_s,
        }


def main() -> None:
    parent_pid = os.getppid()
    die_with_parent()  # a bench killed without its cleanup (SIGTERM, SIGKILL) takes its load workers along
    if os.getppid() != parent_pid:  # the bench died before the signal was armed
        sys.exit(1)
    job = json.loads(sys.stdin.readline())
    report = asyncio.run(_serve_job(job))
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
