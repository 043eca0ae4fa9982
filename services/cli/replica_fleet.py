"""Several engine and predictor replicas as real processes on loopback, for tests and benchmarks.

The multi-replica test and `python -m services.cli.bench_replicas` both need what compose's
`--scale engine=2 --scale predictor=2` gives: independent processes that can be killed one at a
time. Each replica is spawned like `alise up` spawns its children (services.cli.child: own process
group, parent-death signal, READY line, grpc.health.v1 SERVING), all at once, on OS-chosen ports.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import sys
from dataclasses import dataclass

from services.cli.child import ChildProcess
from services.cli.stack_plan import LOOPBACK_HOST, ChildSpec
from services.common.health import wait_until_serving
from services.common.model_catalog import DUMMY_TINY_MODEL

# The smallest useful engine: default tiny model on CPU, one torch thread, a small KV pool.
SMALL_ENGINE_ARGS = (
    "--model",
    DUMMY_TINY_MODEL,
    "--device",
    "cpu",
    "--dtype",
    "float32",
    "--cpu-threads",
    "1",
    "--num-kv-blocks",
    "256",
    "--max-num-seqs",
    "16",
)
SMALL_PREDICTOR_ARGS = ("--cpu-only",)


@dataclass(frozen=True)
class FleetConfig:
    """What to start."""

    num_engines: int  # engine replicas (>= 1)
    num_predictors: int  # predictor replicas (>= 0)
    log_dir: pathlib.Path  # one `<name>.log` per replica
    engine_args: tuple[str, ...] = SMALL_ENGINE_ARGS  # extra flags for every engine
    predictor_args: tuple[str, ...] = SMALL_PREDICTOR_ARGS  # extra flags for every predictor
    startup_timeout_s: float = 120.0  # per replica, spawn until SERVING
    log_level: str = "WARNING"  # the replicas' --log-level

    def __post_init__(self) -> None:
        if self.num_engines < 1 or self.num_predictors < 0:
            raise ValueError(f"need >= 1 engine and >= 0 predictors, got {self.num_engines}, {self.num_predictors}")
        if self.startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s must be > 0, got {self.startup_timeout_s}")


class ReplicaFleet:
    """The running replicas; `stop()` always leaves no process behind."""

    def __init__(self, config: FleetConfig) -> None:
        self._config = config
        self.engines = [self._child("engine", i, config.engine_args) for i in range(config.num_engines)]
        self.predictors = [self._child("predictor", i, config.predictor_args) for i in range(config.num_predictors)]

    def _child(self, service: str, index: int, extra: tuple[str, ...]) -> ChildProcess:
        argv = [
            sys.executable,
            "-m",
            f"services.{service}",
            "--host",
            LOOPBACK_HOST,
            "--port",
            "0",
            "--drain-seconds",
            "0",
            "--log-level",
            self._config.log_level,
            *extra,
        ]
        if service == "engine":
            argv += ["--engine-id", f"engine-{index}"]
        name = f"{service}-{index}"
        return ChildProcess(ChildSpec(name, tuple(argv)), self._config.log_dir / f"{name}.log")

    @property
    def engine_addresses(self) -> list[str]:
        return [child.address or "" for child in self.engines]

    @property
    def predictor_addresses(self) -> list[str]:
        return [child.address or "" for child in self.predictors]

    async def start(self) -> None:
        """Starts every replica in parallel; returns when all are SERVING (or stops all and raises)."""
        children = self.engines + self.predictors
        try:
            await asyncio.gather(*(self._start_one(child) for child in children))
        except BaseException:
            await self.stop()
            raise

    async def _start_one(self, child: ChildProcess) -> None:
        await child.start({})
        timeout_s = self._config.startup_timeout_s
        async with asyncio.timeout(timeout_s):
            address = await child.wait_ready()
            await wait_until_serving(address, timeout_s=timeout_s)

    def kill(self, child: ChildProcess, sig: signal.Signals = signal.SIGKILL) -> None:
        """Sends `sig` to one replica (SIGKILL: a crash; SIGSTOP: a frozen host)."""
        if child.pid is not None:
            os.kill(child.pid, sig)

    async def stop(self) -> None:
        """SIGTERM (SIGKILL after 5 s) to every replica still running; stopped ones are resumed first."""
        children = self.engines + self.predictors
        for child in children:
            if child.pid is not None and child.returncode is None:
                try:
                    os.kill(child.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        await asyncio.gather(*(child.stop(5.0) for child in children), return_exceptions=True)
