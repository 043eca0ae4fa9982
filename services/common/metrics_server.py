"""A service's Prometheus `/metrics` endpoint: its own registry, served on its own HTTP port.

- Own `CollectorRegistry` per service instance, never the global default: tests run several services
  in one process, and the default registry would mix their series (or refuse the duplicates).
- Served by prometheus_client's own HTTP server (WSGI) on a daemon thread: a scrape never waits
  for the service's event loop, and a maintained server parses the HTTP, not our code.
- Collectors that read state owned by the event loop take their snapshot on that loop
  (`run_on_loop`), so a scrape from the HTTP thread never sees a dict that is being changed.

(The gateway serves its /metrics on its HTTP port instead: services/gateway/metrics.py.)

The port flag (`--metrics-port`, see `add_metrics_port_flag`):

    absent        the service's default port (engine 9102, predictor 9103, memory 9104), best
                  effort: if it is taken (another replica on this host) the service logs a
                  warning and serves without /metrics
    N (1..65535)  that port; a port in use stops the service with the reason
    0             a free port chosen by the OS (logged; tests read it from the service handle)
    -1            no /metrics endpoint
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from services.common.flags import validate_port
from services.common.server import ServiceHandle

log = logging.getLogger(__name__)

DISABLED = -1  # --metrics-port value that turns the endpoint off
ENGINE_METRICS_PORT = 9102
PREDICTOR_METRICS_PORT = 9103
MEMORY_METRICS_PORT = 9104
SNAPSHOT_TIMEOUT_S = 2.0  # longest a scrape waits for the event loop to take a snapshot
T = TypeVar("T")


@dataclass(frozen=True)
class MetricsPort:
    """Where a service serves /metrics (None in a service config = no endpoint)."""

    number: int  # TCP port; 0 = the OS picks a free one
    must_bind: bool = True  # False (the flag's default port): a port in use logs a warning instead

    def __post_init__(self) -> None:
        validate_port(self.number)


def add_metrics_port_flag(parser: argparse.ArgumentParser, *, default_port: int) -> None:
    """--metrics-port; read it back with `metrics_port_from_flag`."""
    parser.add_argument(
        "--metrics-port",
        type=_metrics_port_arg,
        default=None,
        help=f"HTTP port of /metrics (default {default_port}, skipped with a warning if taken; "
        f"0 = any free port; {DISABLED} = off)",
    )


def _metrics_port_arg(text: str) -> int:
    """argparse type of --metrics-port: an int in [-1, 65535] (argparse reports anything else)."""
    value = int(text)
    if not DISABLED <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be {DISABLED} (off) or in [0, 65535], got {value}")
    return value


def metrics_port_from_flag(value: int | None, *, default_port: int) -> MetricsPort | None:
    """The flag's value as config: None when disabled (-1), the best-effort default when absent."""
    if value is None:
        return MetricsPort(default_port, must_bind=False)
    if value == DISABLED:
        return None
    return MetricsPort(value)


class MetricsServer:
    """A running /metrics endpoint; `port` is the bound one (never 0)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port

    def stop(self) -> None:
        """Stops serving and closes the socket (blocks up to one poll interval, 0.5 s)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def start_metrics_server(registry: CollectorRegistry, host: str, port: MetricsPort) -> MetricsServer | None:
    """Serves `registry` on host:port; None when a best-effort port is taken."""
    try:
        server, thread = start_http_server(port.number, addr=host, registry=registry)
    except OSError as error:
        if port.must_bind:
            raise OSError(
                f"cannot serve /metrics on {host}:{port.number} ({error}); "
                f"use --metrics-port 0 (any free port) or {DISABLED} (off)"
            ) from error
        log.warning(
            "metrics port %s:%d is taken (%s): serving without /metrics; set --metrics-port",
            host,
            port.number,
            error,
        )
        return None
    log.info("serving /metrics on http://%s:%d/metrics", host, server.server_port)
    return MetricsServer(server, thread, host)


def run_on_loop(loop: asyncio.AbstractEventLoop, read: Callable[[], T]) -> T | None:
    """`read()` run on `loop`'s thread: directly when called there (an ASGI scrape), else handed
    to the loop and waited for (a scrape on the HTTP thread). None when the loop is closed or
    busier than SNAPSHOT_TIMEOUT_S (the scrape then lacks those series, it does not hang)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return read()
    if loop.is_closed():
        return None
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def on_loop() -> None:
        try:
            result.set_result(read())
        except Exception as error:  # noqa: BLE001 - handed to the scraping thread
            result.set_exception(error)

    try:
        loop.call_soon_threadsafe(on_loop)
        return result.result(timeout=SNAPSHOT_TIMEOUT_S)
    except RuntimeError:  # the loop closed in between
        return None
    except concurrent.futures.TimeoutError:
        log.warning("metrics snapshot: the event loop did not answer within %.1f s", SNAPSHOT_TIMEOUT_S)
        return None


async def serve_metrics(
    handle: ServiceHandle, registry: CollectorRegistry, host: str, port: MetricsPort | None
) -> None:
    """Starts the endpoint for a started service: records its port on the handle and stops it
    with the service (after the gRPC drain, so the last scrape still sees the drained state).
    A port that must bind and cannot stops the service before the error propagates."""
    if port is None:
        return
    try:
        server = start_metrics_server(registry, host, port)
    except OSError:
        await handle.stop()
        raise
    if server is None:
        return
    handle.metrics_port = server.port

    async def stop_metrics_server() -> None:
        await asyncio.to_thread(server.stop)

    handle.on_stop.append(stop_metrics_server)
