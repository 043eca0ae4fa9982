"""kill -9 of the gateway behind `alise up`: the real launcher restarts it, nobody else acts.

The other kill scenarios (chaos_faults) restart the killed service themselves, as `alise up` would;
the gateway is the one clients talk to, so here the whole stack runs under a real `alise up`
process and the only thing the measurement does is kill -9 the gateway's process:

    alise up (memory, engine, gateway; tiny model)   load: closed loop through the gateway
    kill -9 gateway at t0 -> streams in flight fail (UNAVAILABLE), new calls fail fast
    -> alise up notices, waits its backoff, starts a gateway on the same port
    -> first token of a new stream: the recovery time, from t0

The gateway keeps its gRPC port because the launcher restarts a child on the port it first bound.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass

import grpc

from services.bench.chaos_load import ClosedLoopLoad, LoadShape, StreamOutcome, count_codes
from services.bench.chaos_stack import ENGINE_ARGS, MEMORY_ARGS
from services.common.contracts import gateway_service_pb2_grpc
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.common.server import GRPC_OPTIONS

# `alise up` status lines (services/cli/launcher.py): "gateway    127.0.0.1:41234   pid 5678  SERVING ..."
_SERVING_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<address>\S+:\d+)\s+pid (?P<pid>\d+)\s+SERVING (?P<what>.*)$")
_UP_LINE = "alise up: gateway serving on"
_ENGINE_FLAGS = tuple(arg for arg in ENGINE_ARGS if arg not in ("--model", DUMMY_TINY_MODEL))


@dataclass(frozen=True)
class GatewayRestartResult:
    """What the clients saw when the gateway died under `alise up` (JSON-ready)."""

    in_flight_codes: dict[str, int]  # streams running at the kill, by final status
    new_codes: dict[str, int]  # streams started after the kill, before the first OK one
    max_failure_notice_s: float  # kill -> the end of the slowest in-flight stream that failed
    max_new_request_answer_s: float  # slowest answer (status) of a request started while it was down
    restart_serving_s: float  # kill -> `alise up` reports the new gateway SERVING (its own line)
    recovery_s: float  # kill -> the first token of a stream started after the kill
    address_before: str  # the gateway's gRPC address before the kill
    address_after: str  # and after its restart (must be the same)
    launcher_line: str  # what `alise up` printed about the death, verbatim

    def to_json(self) -> dict:
        return asdict(self)


class UpStack:
    """`alise up` with the tiny model and no predictor, every port chosen by the OS."""

    def __init__(self, log_dir: pathlib.Path) -> None:
        self.log_dir = log_dir
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []  # stdout and stderr of `alise up`, as they come
        self.serving: dict[str, tuple[str, int]] = {}  # child -> (address, pid) from its latest SERVING line
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "services.cli.main", "up", "--model", DUMMY_TINY_MODEL, "--no-predictor"]
        argv += ["--gateway-port", "0", "--gateway-http-port", "0", "--engine-port", "0", "--log-level", "WARNING"]
        argv += ["--log-dir", str(self.log_dir), "--drain-seconds", "1", "--stop-grace-s", "5"]
        argv += [f"--engine-arg={arg}" for arg in _ENGINE_FLAGS]
        return argv + [f"--memory-arg={arg}" for arg in MEMORY_ARGS]

    async def start(self, timeout_s: float = 180.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
        )
        self._readers = [asyncio.create_task(self._read(s)) for s in (self.process.stdout, self.process.stderr)]
        await self.wait_for_line(_UP_LINE, timeout_s)

    async def _read(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while raw := await stream.readline():
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            match = _SERVING_LINE.match(line)
            if match:
                self.serving[match["name"]] = (match["address"], int(match["pid"]))
            self._changed.set()

    async def wait_for_line(self, fragment: str, timeout_s: float, *, after: int = 0) -> str:
        """The first line from index `after` on that contains `fragment`."""
        async with asyncio.timeout(timeout_s):
            while True:
                for line in self.lines[after:]:
                    if fragment in line:
                        return line
                if self.process is not None and self.process.returncode is not None:
                    raise RuntimeError(f"alise up exited ({self.process.returncode}):\n" + "\n".join(self.lines[-20:]))
                self._changed.clear()
                await self._changed.wait()

    @property
    def http_url(self) -> str:
        """The gateway's HTTP base URL as `alise up` printed it ("gateway HTTP: <url> (OpenAI ...)")."""
        line = next(line for line in self.lines if line.startswith("gateway HTTP: "))
        return line.split()[2]

    def gateway_channel(self) -> grpc.aio.Channel:
        backoff_ms = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 200))
        options = (*GRPC_OPTIONS, *backoff_ms, ("grpc.min_reconnect_backoff_ms", 100))
        return grpc.aio.insecure_channel(self.serving["gateway"][0], options=options)

    async def stop(self) -> int | None:
        """SIGTERM to `alise up` (it stops its children), SIGKILL to its group after 30 s."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30.0)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        return process.returncode


async def kill_gateway_under_load(
    stack: UpStack, *, concurrency: int = 8, timeout_s: float = 60.0
) -> GatewayRestartResult:
    """kill -9 the gateway with `concurrency` streams going; returns once a new stream succeeded."""
    channel = stack.gateway_channel()
    shape = LoadShape(concurrency=concurrency, min_tokens=16, max_tokens=48, retry_pause_s=0.05)
    load = ClosedLoopLoad(gateway_service_pb2_grpc.GatewayServiceStub(channel), shape).start()
    try:
        await asyncio.sleep(2.0)  # streams in every phase at the kill
        address_before, pid = stack.serving["gateway"]
        num_lines, num_before = len(stack.lines), len(load.outcomes)
        in_flight = [o for o in load.outcomes if o.ended_s == 0.0]
        killed_s = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        launcher_line = await stack.wait_for_line("gateway (pid", timeout_s, after=num_lines)
        await stack.wait_for_line("SERVING again", timeout_s, after=num_lines)
        restart_serving_s = time.monotonic() - killed_s
        recovered = await _first_token_after(load, num_before, timeout_s)
    finally:
        outcomes = await load.stop()
        await channel.close()
    # Streams started while it was down: those started before the first one that got a token (by start,
    # not by first token: a stream started just before it may be answered just after it, by the new gateway).
    first_served = min((o for o in outcomes[num_before:] if o.first_token_s is not None), key=lambda o: o.started_s)
    new = [o for o in outcomes[num_before:] if o.started_s < first_served.started_s]
    failed = [o for o in in_flight if o.code != "OK"]
    return GatewayRestartResult(
        in_flight_codes=count_codes(in_flight),
        new_codes=count_codes(new),
        max_failure_notice_s=max((o.ended_s - killed_s for o in failed), default=0.0),
        max_new_request_answer_s=max((o.ended_s - o.started_s for o in new if o.code != "OK"), default=0.0),
        restart_serving_s=restart_serving_s,
        recovery_s=recovered.first_token_s - killed_s,
        address_before=address_before,
        address_after=stack.serving["gateway"][0],
        launcher_line=launcher_line,
    )


async def _first_token_after(load: ClosedLoopLoad, index: int, timeout_s: float) -> StreamOutcome:
    """The stream from `index` on that got a token first."""
    began_s = time.monotonic()
    while True:
        answered = [o for o in load.outcomes[index:] if o.first_token_s is not None]
        if answered:
            return min(answered, key=lambda o: o.first_token_s)
        if time.monotonic() - began_s > timeout_s:
            raise TimeoutError(f"no new stream got a token within {timeout_s} s of the gateway's kill")
        await asyncio.sleep(0.02)
