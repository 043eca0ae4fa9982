"""Starting, announcing and stopping a service's grpc.aio server the same way in every service.

Every server gets: the status-mapping interceptor, the standard grpc.health.v1 service (SERVING
once `start_server` returns, NOT_SERVING while draining) and server reflection (so grpcurl works
without .proto files). Port 0 asks the OS for a free port; `RunningServer.port` is the real one,
which is how tests run every service in-process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.cli_errors import print_error
from services.common.decode_guard import DecodeGuardInterceptor
from services.common.drain import InFlightCalls
from services.common.errors import StatusMappingInterceptor
from services.common.grpc_options import GRPC_OPTIONS, MAX_MESSAGE_BYTES
from services.common.tls import TlsFiles, server_credentials

log = logging.getLogger(__name__)

# Calls one server runs at once; beyond it grpc.aio answers RESOURCE_EXHAUSTED "Concurrent RPC
# limit exceeded!" at once. A backstop under the services' own admission limits (the gateway's
# in-flight limit, the engine's waiting caps), which reject earlier with their own messages.
DEFAULT_MAX_CONCURRENT_RPCS = 16_384
# gRPC core queues calls the Python server has not picked up yet; past its default backlog (1,000
# soft, 3,000 hard) it silently cancels new ones: 5,000 concurrent Health.Check calls on one
# channel ended ~2,250 CANCELLED with no message (measured, grpcio 1.85). Letting every call reach
# Python, where the concurrency limit and admission answer RESOURCE_EXHAUSTED with a message,
# makes overload visible to the client.
MAX_PENDING_CALLS = 1_000_000
# gRPC core also cancels a call that waits unpicked in that queue for 30 s (its default of
# grpc.server_max_unrequested_time_in_server), again with no message: the client gets CANCELLED
# "CANCELLED", which it cannot tell from its own cancellation. The Python server picks calls up one
# at a time on its event loop, so a starved process (a shared machine at load 10-15) fell behind: a
# 5-minute soak had 134 streams of one burst end that way after 30.9 s with 0 tokens while the
# gateway's QUEUE_FULL refusals took 28 s to arrive. A day instead: a call waits until the server
# takes it (and answers it, e.g. with a refusal that says why) or until its own deadline.
MAX_UNPICKED_CALL_WAIT_S = 24 * 3600
# After the drain deadline, time for the UNAVAILABLE statuses to go out before gRPC cancels the rest.
DRAIN_ABORT_MARGIN_S = 3.0  # stop() returns as soon as the aborted calls end; a busy loop may need seconds
# Channels between services: reconnect to a restarted peer within ~0.5 s. gRPC's default backoff
# grows to 120 s, and an engine took ~48 s to re-register after the memory service came back.
PEER_CHANNEL_OPTIONS = (
    *GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)
SERVER_OPTIONS = (
    *GRPC_OPTIONS,
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ("grpc.server_max_unrequested_time_in_server", MAX_UNPICKED_CALL_WAIT_S),
    # gRPC sets SO_REUSEPORT by default on Linux: a second server on a busy port then binds silently
    # and the kernel spreads connections over both (two `alise up` stacks served each other's clients).
    ("grpc.so_reuseport", 0),
)


class PortBindError(OSError):
    """A listening port could not be bound; the message names the address and the flag that sets it."""

    def __init__(self, what: str, host: str, port: int, flag: str, reason: str) -> None:
        super().__init__(f"cannot listen for {what} on {host}:{port} ({reason}); choose another port with {flag}")


@dataclass
class RunningServer:
    """A started server and what its owner needs to report on and stop it."""

    server: grpc.aio.Server  # the grpc.aio server, already started
    port: int  # the TCP port actually bound (never 0)
    host: str  # the interface it listens on
    health: health.aio.HealthServicer  # flip to NOT_SERVING while draining
    service_names: tuple[str, ...]  # fully qualified names of the alise services it serves
    in_flight: InFlightCalls = field(default_factory=InFlightCalls)  # running calls, aborted at the drain deadline

    @property
    def address(self) -> str:
        """host:port a client on this machine can dial."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "[::]", "::") else self.host
        return f"{host}:{self.port}"

    async def stop(self, grace_s: float) -> None:
        """Reports NOT_SERVING, refuses new calls, lets in-flight calls finish for up to grace_s, then
        ends the rest with UNAVAILABLE (see services/common/drain.py) and stops."""
        await self.health.enter_graceful_shutdown()
        # The server's own grace outlasts ours, so the UNAVAILABLE statuses are sent before it cancels.
        stopping = asyncio.ensure_future(self.server.stop(grace_s + DRAIN_ABORT_MARGIN_S))
        try:
            await asyncio.wait_for(asyncio.shield(stopping), timeout=grace_s)
        except TimeoutError:
            num_aborted = self.in_flight.abort_all()
            log.info("drain deadline (%.1f s) passed: %d calls ended UNAVAILABLE", grace_s, num_aborted)
            await stopping


async def start_server(
    *,
    host: str,
    port: int,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    tls: TlsFiles | None = None,
    require_client_cert: bool = False,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
    max_receive_message_bytes: int = MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Builds, binds and starts a server; `register` adds the service's servicers to it.

    tls: serve TLS with its certificate (plaintext when None); require_client_cert: mutual TLS,
    clients need a certificate of tls.ca_path. `interceptors` run after status mapping (e.g. the
    gateway's API-key check), so their own AliseErrors are mapped too; undecodable request bytes are
    answered INVALID_ARGUMENT before any of them (DecodeGuardInterceptor). A request larger than
    max_receive_message_bytes is refused by gRPC itself (RESOURCE_EXHAUSTED) before Python sees it.
    """
    in_flight = InFlightCalls()
    server = grpc.aio.server(
        interceptors=[DecodeGuardInterceptor(), in_flight, StatusMappingInterceptor(), *interceptors],
        options=_server_options(max_receive_message_bytes),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:  # grpcio raises RuntimeError "Failed to bind" (older releases returned port 0)
        if tls is None:
            bound_port = server.add_insecure_port(f"{host}:{port}")
        else:
            credentials = server_credentials(tls, require_client_cert=require_client_cert)
            bound_port = server.add_secure_port(f"{host}:{port}", credentials)
    except RuntimeError:
        bound_port = 0
    if bound_port == 0:
        raise PortBindError("gRPC", host, port, "--port", "address in use or not available")
    await server.start()
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d", ", ".join(service_names), host, bound_port)
    return RunningServer(server, bound_port, host, health_servicer, tuple(service_names), in_flight)


def _server_options(max_receive_message_bytes: int) -> tuple[tuple[str, int], ...]:
    """SERVER_OPTIONS with the receive limit replaced (gRPC takes the first of duplicate keys)."""
    options = tuple(option for option in SERVER_OPTIONS if option[0] != "grpc.max_receive_message_length")
    return (*options, ("grpc.max_receive_message_length", max_receive_message_bytes))


@dataclass
class ServiceHandle:
    """A running service: its server plus the clean-up of whatever else it started.

    Returned by every service's `app.start(config)`, in tests (port 0) and in `__main__` alike.
    """

    running: RunningServer  # the gRPC server
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run after drain
    metrics_port: int | None = None  # bound port of its /metrics HTTP endpoint; None = not served

    @property
    def address(self) -> str:
        return self.running.address

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace_s: float = 0.0) -> None:
        """Drains the server for up to grace_s, then runs the clean-ups in order."""
        await self.running.stop(grace_s)
        for clean_up in self.on_stop:
            await clean_up()


async def run_until_signal(handle: ServiceHandle, *, grace_s: float) -> None:
    """Serves until SIGINT or SIGTERM, then drains for grace_s and stops.

    Prints `READY <service names> <host:port>` on stdout once serving, so a launcher that passed
    --port 0 learns the real port.
    """
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested.set)
    print(f"READY {','.join(handle.running.service_names)} {handle.address}", flush=True)
    await stop_requested.wait()
    log.info("stopping: draining for up to %.1f s", grace_s)
    await handle.stop(grace_s)


EXIT_OK = 0
EXIT_CANNOT_LISTEN = 1  # a port could not be bound (usually already in use)


def serve_main(prog: str, start: Callable[[], Awaitable[ServiceHandle]], *, grace_s: float) -> int:
    """Every service's `python -m` body: start it, serve until SIGINT/SIGTERM, drain for grace_s.

    A port that cannot be bound ends in one error line naming the address and the flag (exit 1)
    instead of a traceback, the same for all four services.
    """

    async def serve() -> None:
        handle = await start()
        await run_until_signal(handle, grace_s=grace_s)

    try:
        asyncio.run(serve())
    except PortBindError as error:
        print_error(prog, str(error))
        return EXIT_CANNOT_LISTEN
    return EXIT_OK
