"""The real stack for fault tests and `alise bench chaos` / `soak`: services as killable processes.

memory, predictor and N engines run as child processes on loopback (spawned like `alise up` spawns
them: own process group, READY line, grpc.health.v1 SERVING), the gateway in the caller's process
(its state is what a test inspects). A killed service is restarted on the same port, as `alise up`'s
supervisor does, so its peers' addresses stay valid:

    memory <- engine-0, engine-1 (--memory-address)      predictor, engine-i <- gateway (in-process)

Settings are sized for a shared 2-core CI machine: the tiny random model, one torch thread per
engine, a small KV pool (so preemption, swap-out and swap-in happen), a short liveness timeout.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import sys
import time
from dataclasses import dataclass, field

import grpc

from services.bench.chaos_contention import process_cpu_s
from services.bench.soak_rss import rss_bytes_of
from services.cli.child import ChildProcess
from services.cli.stack_plan import LOOPBACK_HOST, ChildSpec, with_port
from services.common.contracts import (
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2_grpc,
    memory_service_pb2,
    memory_service_pb2_grpc,
)
from services.common.health import wait_until_serving
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.common.server import GRPC_OPTIONS

ENGINE_ARGS = (
    "--model",
    DUMMY_TINY_MODEL,
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--cpu-threads",
    "1",
    "--num-kv-blocks",
    "96",
    "--max-num-seqs",
    "16",
    "--max-num-batched-tokens",
    "256",
)
# Liveness in seconds that a test can wait for: reports every 0.5 s, expiry after 3 s of silence.
MEMORY_ARGS = (
    "--report-interval-s",
    "0.5",
    "--stale-after-s",
    "2",
    "--expire-after-s",
    "3",
    "--host-tier-capacity-bytes",
    str(64 * 1024 * 1024),
    "--host-tier-block-bytes",
    str(16 * 1024),
)
PREDICTOR_ARGS = ("--cpu-only",)


@dataclass(frozen=True)
class ChaosStackConfig:
    """What to start."""

    log_dir: pathlib.Path  # one `<name>.log` per child
    num_engines: int = 2
    with_predictor: bool = True
    engine_args: tuple[str, ...] = ENGINE_ARGS
    memory_args: tuple[str, ...] = MEMORY_ARGS
    predictor_args: tuple[str, ...] = PREDICTOR_ARGS
    drain_s: float = 2.0  # every child's --drain-seconds
    startup_timeout_s: float = 120.0  # per child, spawn until SERVING
    gateway_options: dict = field(default_factory=dict)  # extra GatewayConfig fields (in-process gateway)
    # False: the gateway is a process too (overload figures: client and gateway must not share a loop);
    # then gateway_args are its extra flags
    gateway_in_process: bool = True
    gateway_args: tuple[str, ...] = ()
    # the engines' module (`python -m`): another one wraps the engine for a bench, e.g.
    # services.bench.overload_step_trace (then engine_args carry its own flags too)
    engine_module: str = "services.engine"

    def __post_init__(self) -> None:
        if self.num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {self.num_engines}")


class ChaosStack:
    """The running stack; `stop()` leaves no process behind."""

    def __init__(self, config: ChaosStackConfig) -> None:
        self.config = config
        self.children: dict[str, ChildProcess] = {}
        self.addresses: dict[str, str] = {}
        self.gateway = None  # the in-process gateway's ServiceHandle
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._specs = self._plan()

    @property
    def engine_names(self) -> list[str]:
        return [f"engine-{index}" for index in range(self.config.num_engines)]

    def _argv(self, service: str, *extra: str, module: str = "") -> tuple[str, ...]:
        """A child's command line: loopback, an OS-chosen port, the stack's drain time, then `extra`
        (`python -m services.<service>`, or `module` when given)."""
        return (
            sys.executable,
            "-m",
            module or f"services.{service}",
            "--host",
            LOOPBACK_HOST,
            "--port",
            "0",
            "--drain-seconds",
            repr(self.config.drain_s),
            "--log-level",
            "WARNING",
            *extra,
        )

    def _plan(self) -> dict[str, ChildSpec]:
        argv = self._argv
        specs = {"memory": ChildSpec("memory", argv("memory", *self.config.memory_args))}
        if self.config.with_predictor:
            specs["predictor"] = ChildSpec("predictor", argv("predictor", *self.config.predictor_args))
        for name in self.engine_names:
            engine_argv = argv(
                "engine", *self.config.engine_args, "--engine-id", name, module=self.config.engine_module
            )
            specs[name] = ChildSpec(name, engine_argv, (("--memory-address", "memory"),))
        return specs

    async def start(self) -> None:
        """Memory first, then the rest in parallel, then the gateway; all SERVING on return."""
        try:
            await self._start_child("memory")
            await asyncio.gather(*(self._start_child(name) for name in self._specs if name != "memory"))
            await self._start_gateway()
        except BaseException:
            await self.stop()
            raise

    async def _start_child(self, name: str) -> float:
        """Spawns `name` (on its old port when it ran before); returns the seconds until SERVING."""
        began_s = time.monotonic()
        spec = self._specs[name]
        if name in self.addresses:
            spec = with_port(spec, int(self.addresses[name].rsplit(":", 1)[1]))
        child = ChildProcess(spec, self.config.log_dir / f"{name}.log")
        self.children[name] = child
        await child.start(self.addresses)
        timeout_s = self.config.startup_timeout_s
        async with asyncio.timeout(timeout_s):
            self.addresses[name] = await child.wait_ready()
            await wait_until_serving(self.addresses[name], timeout_s=timeout_s)
        return time.monotonic() - began_s

    async def _start_gateway(self) -> None:
        if not self.config.gateway_in_process:
            await self._start_gateway_process()
            return
        from services.gateway import app as gateway_app  # the bench imports it only when a stack starts
        from services.gateway.config import GatewayConfig

        options = dict(
            engine_address=",".join(self.addresses[name] for name in self.engine_names),
            predictor_address=self.addresses.get("predictor", ""),
            port=0,
            feedback_queue_size=0,
            predictor_timeout_ms=500,
            health_check_interval_s=0.2,
            health_check_timeout_s=2.0,
        )
        options.update(self.config.gateway_options)
        self.gateway = await gateway_app.start(GatewayConfig(**options))

    async def _start_gateway_process(self, name: str = "gateway", extra_args: tuple[str, ...] | None = None) -> None:
        argv = self._argv(
            "gateway",
            "--http-port",
            "0",
            "--feedback-queue-size",
            "0",
            "--engine-address",
            ",".join(self.addresses[name] for name in self.engine_names),
            "--health-check-interval-s",
            "0.2",
            "--health-check-timeout-s",
            "2.0",
            *(("--predictor-address", self.addresses["predictor"]) if "predictor" in self.addresses else ()),
            *(self.config.gateway_args if extra_args is None else extra_args),
        )
        self._specs[name] = ChildSpec(name, argv)
        await self._start_child(name)

    async def add_gateway(self, name: str, extra_args: tuple[str, ...]) -> None:
        """One more gateway process on the same engines, with its own flags (A/B runs of gateway settings on
        one engine: use one gateway at a time, since each counts only its own requests); `channel(name)`
        reaches it and `stop()` stops it."""
        if name in self._specs:
            raise ValueError(f"a service named {name!r} is already part of the stack")
        await self._start_gateway_process(name, extra_args)

    @property
    def gateway_address(self) -> str:
        return self.gateway.address if self.gateway is not None else self.addresses["gateway"]

    def kill(self, name: str) -> None:
        """kill -9 of one service's whole process group (a crash: no drain, no unregister)."""
        child = self.children[name]
        if child.pid is not None and child.returncode is None:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def wait_exit(self, name: str) -> int:
        return await self.children[name].wait_exit()

    async def restart(self, name: str) -> float:
        """Starts a killed service again on its port; the seconds until it is SERVING."""
        await self.children[name].stop(0.0)
        return await self._start_child(name)

    def channel(self, name: str) -> grpc.aio.Channel:
        """A channel to a service ("gateway" included), reused; reconnects quickly after a restart."""
        if name not in self._channels:
            address = self.gateway_address if name == "gateway" else self.addresses[name]
            options = (
                *GRPC_OPTIONS,
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 300),
            )
            self._channels[name] = grpc.aio.insecure_channel(address, options=options)
        return self._channels[name]

    def gateway_stub(self) -> gateway_service_pb2_grpc.GatewayServiceStub:
        return gateway_service_pb2_grpc.GatewayServiceStub(self.channel("gateway"))

    async def engine_stats(self, name: str) -> engine_service_pb2.EngineServiceGetStatsResponse:
        stub = engine_service_pb2_grpc.EngineServiceStub(self.channel(name))
        return await stub.GetStats(engine_service_pb2.EngineServiceGetStatsRequest(), timeout=5.0)

    async def memory_stats(self) -> memory_service_pb2.MemoryServiceGetStatsResponse:
        stub = memory_service_pb2_grpc.MemoryServiceStub(self.channel("memory"))
        return await stub.GetStats(memory_service_pb2.MemoryServiceGetStatsRequest(), timeout=5.0, wait_for_ready=True)

    def rss_bytes(self, name: str) -> int:
        """Resident memory of one child process (Linux /proc), bytes."""
        return rss_bytes_of(self.children[name].pid)

    def cpu_s(self, name: str) -> float:
        """CPU time (user + system) one child process has used so far (Linux /proc), seconds."""
        return process_cpu_s(self.children[name].pid)

    async def stop(self) -> None:
        """Gateway, then every child (SIGTERM, SIGKILL after 5 s)."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        if self.gateway is not None:
            await self.gateway.stop(0.0)
            self.gateway = None
        await asyncio.gather(*(child.stop(5.0) for child in self.children.values()), return_exceptions=True)
