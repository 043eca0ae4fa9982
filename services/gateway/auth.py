"""API keys: one check for HTTP (`Authorization: Bearer <key>`) and gRPC (`authorization` metadata).

Keys are compared with hmac.compare_digest against every configured key, without stopping at the
first match, so the time taken does not tell an attacker how much of a guess was right, nor which
key matched. No keys configured = authentication off.
Health checks stay open (load balancers and orchestrators probe without credentials), and so does
server reflection (it describes the API, it does not run it).
"""

from __future__ import annotations

import hmac
import pathlib
from typing import Any, Iterable, Sequence

import grpc

from services.common.errors import Unauthenticated

OPEN_GRPC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
MISSING_KEY_MESSAGE = "missing API key: send 'authorization: Bearer <key>' (HTTP header or gRPC metadata)"
WRONG_KEY_MESSAGE = "invalid API key"


class ApiKeys:
    """The accepted keys; `check` raises Unauthenticated for a missing or wrong one."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(key.encode() for key in keys)
        if any(not key for key in self._keys):
            raise ValueError("API keys must be non-empty")

    @classmethod
    def load(cls, keys: Sequence[str], key_file: str = "") -> "ApiKeys":
        """Keys given directly plus those of key_file (one per line; blank and '#' lines skipped)."""
        all_keys = list(keys)
        if key_file:
            lines = pathlib.Path(key_file).read_text().splitlines()
            all_keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        return cls(all_keys)

    @property
    def enabled(self) -> bool:
        """True when requests must present a key."""
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Validates an Authorization value ("Bearer <key>"); a no-op when authentication is off."""
        if not self._keys:
            return
        presented = bearer_token(authorization)
        if presented is None:
            raise Unauthenticated(MISSING_KEY_MESSAGE)
        candidate = presented.encode()
        matched = False
        for key in self._keys:  # no early exit: the time does not depend on which key matched
            matched |= hmac.compare_digest(key, candidate)
        if not matched:
            raise Unauthenticated(WRONG_KEY_MESSAGE)


def bearer_token(authorization: str | None) -> str | None:
    """The token of "Bearer <token>" (scheme case-insensitive); None when absent or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid `authorization: Bearer <key>` metadata entry (UNAUTHENTICATED)."""

    def __init__(self, api_keys: ApiKeys) -> None:
        self._api_keys = api_keys

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(OPEN_GRPC_METHOD_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        try:
            self._api_keys.check(metadata.get("authorization"))
        except Unauthenticated as error:
            return _refusing(handler, str(error))
        return handler


def _refusing(handler: Any, message: str) -> Any:
    """A handler of the same shape as `handler` that ends the call with UNAUTHENTICATED."""

    async def refuse_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator, as streaming handlers are

    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, refuse_unary),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, refuse_stream),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, refuse_unary),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, refuse_stream),
    )
    for attribute, make, refuse in kinds:
        if getattr(handler, attribute) is not None:
            return make(
                refuse,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
