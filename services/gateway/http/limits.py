"""Pure ASGI middlewares that refuse a request before any route runs: API key (401), body size (413),
body too slow to arrive (408).

Pure ASGI (not BaseHTTPMiddleware) so that streaming responses and disconnects pass through
untouched and the per-request cost stays a dictionary lookup.
"""

from __future__ import annotations

import asyncio

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import Unauthenticated
from services.gateway.auth import ApiKeys
from services.gateway.http.errors import error_body


class ApiKeyMiddleware:
    """401 (OpenAI-shaped, `WWW-Authenticate: Bearer`) unless the path is open or the key is valid."""

    def __init__(self, app: ASGIApp, *, api_keys: ApiKeys, open_paths: frozenset[str]) -> None:
        self._app = app
        self._api_keys = api_keys
        self._open_paths = open_paths  # served without a key (health checks, maybe /metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open_paths:
            await self._app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        try:
            self._api_keys.check(authorization)
        except Unauthenticated as error:
            body = error_body(str(error), "invalid_request_error", code="invalid_api_key")
            response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


class BodySizeLimitMiddleware:
    """413 for bodies over max_bytes: by Content-Length up front, else while the body is read; 408
    for a body not complete within body_timeout_s of the headers (a slowloris client, which sends
    its headers and then a byte now and then, would otherwise hold a connection and its buffer for
    as long as it likes: uvicorn has no such deadline of its own).

    The body is read here, whole, and replayed to the app; after it, `receive` is the server's
    own again (the routes wait on it for the client's disconnect). A 408 closes the connection.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, body_timeout_s: float | None = None) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._body_timeout_s = body_timeout_s  # None = no deadline on receiving the body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            await self._too_large(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self._body_timeout_s):
                body = await self._read_body(receive)
        except TimeoutError:
            await self._too_slow(scope, receive, send)
            return
        if body is None:
            return  # the client left before sending its body
        if len(body) > self._max_bytes:
            await self._too_large(scope, receive, send)
            return
        await self._app(scope, _replaying(body, receive), send)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body; None when the client left first; stops early once over max_bytes."""
        parts: list[bytes] = []
        num_bytes = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            parts.append(message.get("body", b""))
            num_bytes += len(parts[-1])
            if num_bytes > self._max_bytes or not message.get("more_body", False):
                return b"".join(parts)

    async def _too_slow(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body not received within {self._body_timeout_s:g} s (--http-body-timeout-s)"
        body = error_body(message, "invalid_request_error", code="request_timeout")
        response = JSONResponse(body, status_code=408, headers={"Connection": "close"})
        await response(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body exceeds the limit of {self._max_bytes} bytes"
        response = JSONResponse(error_body(message, "invalid_request_error"), status_code=413)
        await response(scope, receive, send)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that first returns the whole body, then defers to the server's receive."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
