"""Health of one peer replica as the gateway sees it, from periodic grpc.health.v1 checks.

    state      routable  how it is entered
    UNKNOWN    fallback  just discovered, no check answered yet
    SERVING    yes       the last check answered SERVING
    DRAINING   no        the last check answered NOT_SERVING (e.g. SIGTERM: in-flight calls finish)
    SUSPECT    no        the last 1 .. max_failures-1 checks failed, or a call to it just failed
    DOWN       no        max_failures checks in a row failed: its in-flight calls are aborted

A replica leaves SUSPECT or DOWN as soon as one check answers SERVING again (a restarted engine on
the same address comes back by itself). "Routable: fallback" means UNKNOWN replicas are used only
while no replica is SERVING.

Why checks and not only call errors: a crashed process resets its connections and every call fails
at once, but a frozen or partitioned host answers nothing, and a stream to it would wait forever.
A check with a deadline turns silence into a failure within timeout_s.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)


class ReplicaState(str, enum.Enum):
    UNKNOWN = "unknown"
    SERVING = "serving"
    DRAINING = "draining"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True)
class HealthSettings:
    """How replicas are checked (a slice of GatewayConfig)."""

    interval_s: float  # pause between two checks of one replica
    timeout_s: float  # deadline of one check; silence longer than this counts as a failure
    max_failures: int  # failed checks in a row that make a replica DOWN (>= 1)


class HealthTracker:
    """The state machine above for one replica; the caller feeds it check results."""

    def __init__(self, max_failures: int) -> None:
        self._max_failures = max_failures
        self.state = ReplicaState.UNKNOWN
        self.num_consecutive_failures = 0  # failed checks since the last answered one
        self.last_error = ""  # why the replica last failed, for messages ("" = never failed)
        self.down_since_s: float | None = None  # time.monotonic() when it became DOWN, None when not DOWN

    @property
    def is_routable(self) -> bool:
        return self.state == ReplicaState.SERVING

    def on_answer(self, serving: bool) -> None:
        """A check answered: SERVING, or NOT_SERVING (draining)."""
        self.num_consecutive_failures = 0
        self.down_since_s = None
        self.state = ReplicaState.SERVING if serving else ReplicaState.DRAINING

    def on_failure(self, reason: str) -> bool:
        """A check failed; returns True exactly when this failure makes the replica DOWN."""
        self.num_consecutive_failures += 1
        self.last_error = reason
        if self.num_consecutive_failures < self._max_failures:
            if self.state != ReplicaState.DOWN:
                self.state = ReplicaState.SUSPECT
            return False
        became_down = self.state != ReplicaState.DOWN
        if became_down:
            self.state = ReplicaState.DOWN
            self.down_since_s = time.monotonic()
        return became_down

    def on_call_failed(self, reason: str) -> None:
        """A call to the replica failed with UNAVAILABLE: stop routing to it until a check answers."""
        self.last_error = reason
        if self.state in (ReplicaState.SERVING, ReplicaState.UNKNOWN):
            self.state = ReplicaState.SUSPECT


async def check_serving(channel: grpc.aio.Channel, service: str, timeout_s: float) -> bool:
    """One grpc.health.v1 Check of `service`; True for SERVING, False for any other answer.

    Raises grpc.aio.AioRpcError when the replica does not answer (refused, timeout, unknown service).
    """
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def describe_rpc_error(error: grpc.aio.AioRpcError) -> str:
    """`UNAVAILABLE: failed to connect ...`, short enough for a status message."""
    return f"{error.code().name}: {(error.details() or '').strip()[:200]}"


class PeriodicallyChecked:
    """Base of a replica with its own check loop: `check_once()` every `_settings.interval_s` on the
    event loop (a slow replica never delays the checks of the others), until `close()`, which also
    closes the replica's current channel. A bug in one check is logged, never ends the checking."""

    address: str
    _settings: HealthSettings
    _channel: grpc.aio.Channel
    _task: asyncio.Task[None] | None = None

    async def check_once(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._check_loop(), name=f"check {self.address}")

    async def close(self) -> None:
        """Stops the checks and closes the channel (cancelling any call still on it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._channel.close()

    async def _check_loop(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - a bug in one check must not stop checking for good
                log.exception("health check of %s failed unexpectedly", self.address)
            await asyncio.sleep(self._settings.interval_s)
