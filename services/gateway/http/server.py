"""uvicorn inside the gateway's own asyncio loop, on a socket bound here (so port 0 works).

Why not `uvicorn.run` / `Server.serve`: those own the loop and the process's signal handlers, while
the gateway already runs a grpc.aio server in its loop and handles SIGTERM itself
(services.common.server.run_until_signal). Server.startup / main_loop / shutdown are the pieces
`serve` is made of; running them here gives one loop, one drain, one shutdown order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass

import uvicorn

from services.common.server import PortBindError
from services.common.tls import TlsFiles

log = logging.getLogger(__name__)


@dataclass
class HttpServer:
    """A started uvicorn server; `port` is the bound one (never 0)."""

    server: uvicorn.Server  # its state machine (startup done)
    sock: socket.socket  # the listening socket
    host: str  # interface it listens on
    port: int  # bound TCP port
    scheme: str  # "http" or "https"
    _ticker: asyncio.Task[None]  # uvicorn's main loop: refreshes the Date header, watches should_exit

    @property
    def url(self) -> str:
        """Base URL a client on this machine can use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "[::]") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def stop(self, grace_s: float) -> None:
        """Stops accepting, lets responses in flight finish for up to grace_s, then cancels them.

        uvicorn's Server.shutdown does the same steps but always sleeps 0.1 s first; a gateway
        stops once per test, so here the wait ends as soon as the connections are gone.
        """
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._ticker
        state = self.server.server_state
        for listener in self.server.servers:
            listener.close()
        for connection in list(state.connections):
            connection.shutdown()  # idle keep-alive connections close now, busy ones after their response
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + grace_s
        while (state.connections or state.tasks) and loop.time() < deadline_s:
            await asyncio.sleep(0.01)
        for task in list(state.tasks):
            task.cancel()  # a cancelled stream closes its pipeline: the engine call is cancelled
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=1.0)


async def start_http_server(app: object, *, host: str, port: int, tls: TlsFiles | None = None) -> HttpServer:
    """Binds host:port (0 = any free port) and serves `app` (an ASGI app) in the running loop."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        lifespan="off",  # the gateway starts and stops its own resources
        log_config=None,  # leave the process's logging setup alone
        access_log=False,  # one log line per request would cost more than the request
        ssl_certfile=tls.cert_path if tls is not None else None,
        ssl_keyfile=tls.key_path if tls is not None else None,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    sock = _bind(host, port)
    try:
        await server.startup(sockets=[sock])
    except BaseException:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    ticker = asyncio.create_task(server.main_loop(), name="gateway-http-main-loop")
    scheme = "https" if tls is not None else "http"
    log.info("serving OpenAI-compatible HTTP on %s://%s:%d", scheme, host, bound_port)
    return HttpServer(server, sock, host, bound_port, scheme, ticker)


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; PortBindError (e.g. address in use) names the address and --http-port.

    The protocol must be IPPROTO_TCP explicitly (socket.create_server leaves it 0): asyncio sets
    TCP_NODELAY only on accepted sockets whose proto says TCP, and without it every response
    written in two parts (head, body) waits ~40 ms for the client's delayed ACK (Nagle).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise PortBindError("HTTP", host, port, "--http-port", error.strerror or str(error)) from None
    return sock
