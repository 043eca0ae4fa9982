"""Parent side of the load generator: client processes, one shared start time, results back.

    requests + arrivals -> round-robin shares -> N x `python -m services.bench.serve_worker`
        each connects, says READY -> parent sends start = now + START_MARGIN_S to all
        each sends its share when due -> its results (JSON) -> merged ClientResults

Processes are spawned with asyncio subprocesses (fresh interpreters; the parent may hold gRPC
threads, which must not be forked). A worker that fails or misses its deadline kills the run
with a RuntimeError naming it; every worker is killed on the way out, so none outlives the run.

Client health: a loaded client sends late (send lag = actual send - scheduled arrival) and
burns its CPU; both are reported per run, so a run limited by the client shows as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from services.bench.serve_prompts import ServeRequest
from services.bench.serve_worker import READY_LINE

START_MARGIN_S = 0.5  # from the last READY to the shared start time
STARTUP_TIMEOUT_S = 60.0  # per worker: spawn until READY
PIPE_LIMIT_BYTES = 1 << 28  # a worker's result line holds every request of its share


@dataclass(frozen=True)
class ClientResult:
    """One request as a client process saw it (time.monotonic() seconds)."""

    request_id: str  # the trace's id
    scheduled_s: float  # when it was due to be sent
    sent_s: float  # when its stream was started
    first_token_s: float | None  # first token received; None if none came
    finish_s: float  # stream ended (normally or with an error)
    num_prompt_tokens: int  # as the gateway counted them (BOS included)
    num_output_tokens: int  # tokens received
    num_preemptions: int  # the engine's count for this request
    error: str | None  # "CODE: details" when the stream ended with an error


@dataclass(frozen=True)
class ClientHealth:
    """Was the load generator itself a bottleneck?"""

    num_processes: int  # client processes used
    p50_send_lag_s: float  # actual send - scheduled arrival, median
    p99_send_lag_s: float  # same, p99
    max_send_lag_s: float  # same, worst
    max_cpu_utilization: float  # busiest process: CPU seconds / wall seconds (1.0 = one core saturated)


@dataclass(frozen=True)
class LoadRun:
    """Everything one load run produced."""

    results: list[ClientResult]  # one per request, in no particular order
    health: ClientHealth  # the load generator's own figures


async def run_load(
    requests: Sequence[ServeRequest],
    arrivals_s: Sequence[float],
    *,
    gateway_address: str,
    num_processes: int,
    timeout_s: float,
    seed: int,
    concurrency: int | None = None,
) -> LoadRun:
    """Sends request i at arrivals_s[i] (s after the shared start) from num_processes processes; with
    `concurrency` N, a closed loop instead: N requests in flight (split over the processes), each
    replaced by the next one in arrival order as it ends (serve_worker.dispatch_closed_loop)."""
    if len(requests) != len(arrivals_s) or not requests:
        raise ValueError(f"need one arrival per request, got {len(requests)} requests, {len(arrivals_s)} arrivals")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    num_processes = max(1, min(num_processes, len(requests), concurrency or num_processes))
    jobs = _jobs(requests, arrivals_s, gateway_address, num_processes, timeout_s, seed)
    if concurrency is not None:
        for index, job in enumerate(jobs):  # shares differ by at most one
            job["concurrency"] = concurrency // num_processes + (index < concurrency % num_processes)
    processes: list[asyncio.subprocess.Process] = []
    try:
        for job in jobs:
            processes.append(await _spawn(job))
        await asyncio.gather(*(_wait_ready(process, index) for index, process in enumerate(processes)))
        start_line = json.dumps({"start_monotonic_s": time.monotonic() + START_MARGIN_S}) + "\n"
        for process in processes:
            process.stdin.write(start_line.encode())
            await process.stdin.drain()
        run_deadline_s = timeout_s + max(arrivals_s) + STARTUP_TIMEOUT_S
        if concurrency is not None:  # every request of a slot may take up to timeout_s, one after another
            run_deadline_s = timeout_s * -(-len(requests) // concurrency) + STARTUP_TIMEOUT_S
        reading = asyncio.gather(*(_read_report(process, index) for index, process in enumerate(processes)))
        try:
            reports = await asyncio.wait_for(reading, run_deadline_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"client processes did not report within {run_deadline_s:.0f} s") from None
    finally:
        for process in processes:
            await _reap(process)
    return _merge(reports)


def _jobs(
    requests: Sequence[ServeRequest],
    arrivals_s: Sequence[float],
    gateway_address: str,
    num_processes: int,
    timeout_s: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Round-robin shares (request i -> process i mod N), so each process sees the same rate pattern."""
    jobs: list[dict[str, Any]] = [
        {"gateway_address": gateway_address, "timeout_s": timeout_s, "requests": []} for _ in range(num_processes)
    ]
    for index, (request, arrival_s) in enumerate(zip(requests, arrivals_s)):
        jobs[index % num_processes]["requests"].append(
            {**request.job((seed + index) % (1 << 63)), "arrival_s": float(arrival_s)}
        )
    return jobs


async def _spawn(job: dict[str, Any]) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.bench.serve_worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        limit=PIPE_LIMIT_BYTES,
    )
    process.stdin.write((json.dumps(job) + "\n").encode())
    await process.stdin.drain()
    return process


async def _wait_ready(process: asyncio.subprocess.Process, index: int) -> None:
    try:
        line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise RuntimeError(f"client process {index} not READY within {STARTUP_TIMEOUT_S:g} s") from None
    if line.decode().strip() != READY_LINE:
        raise RuntimeError(f"client process {index} failed to start (stdout: {line[:200]!r}; see its stderr)")


async def _read_report(process: asyncio.subprocess.Process, index: int) -> dict[str, Any]:
    line = await process.stdout.readline()
    if not line:
        raise RuntimeError(f"client process {index} exited with status {await process.wait()} before reporting")
    return json.loads(line)


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Closes stdin and waits briefly; kills the process if it is still there."""
    with contextlib.suppress(Exception):
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), 5.0)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _merge(reports: Sequence[dict[str, Any]]) -> LoadRun:
    results = [ClientResult(**item) for report in reports for item in report["results"]]
    lags_s = np.array([max(0.0, r.sent_s - r.scheduled_s) for r in results])
    utilizations = [report["cpu_s"] / report["wall_s"] for report in reports if report["wall_s"] > 0]
    health = ClientHealth(
        num_processes=len(reports),
        p50_send_lag_s=float(np.percentile(lags_s, 50)),
        p99_send_lag_s=float(np.percentile(lags_s, 99)),
        max_send_lag_s=float(lags_s.max()),
        max_cpu_utilization=max(utilizations, default=0.0),
    )
    return LoadRun(results, health)
