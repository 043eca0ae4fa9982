"""Typed client errors: one class per gRPC status a caller may want to handle differently.

INVALID_ARGUMENT -> InvalidRequestError   (fix the request; retrying cannot help)
UNAUTHENTICATED, PERMISSION_DENIED -> AuthenticationError
NOT_FOUND -> NotFoundError                RESOURCE_EXHAUSTED -> RateLimitError (back off)
UNAVAILABLE -> UnavailableError           DEADLINE_EXCEEDED -> DeadlineExceededError
CANCELLED -> RequestCancelledError        anything else -> ServerError

A refusal (RESOURCE_EXHAUSTED, UNAVAILABLE) also says why, as `refusal_reason` (a RefusalReason read
from the `alise-refusal-reason` trailing metadata, services/common/refusal.py), so a caller chooses
without parsing the message: QUEUE_FULL / QUEUED_WORK_LIMIT back off and retry, DRAINING retry at once
(another replica takes it), DEADLINE_UNMEETABLE ask for a longer deadline or less work,
EXCEEDS_KV_CAPACITY never retry this request here. None when the failure was not a refusal.
"""

from __future__ import annotations

import grpc

from services.common.refusal import RefusalReason, refusal_reason_of


class AliseClientError(Exception):
    """A call to the gateway failed; `code` is the gRPC status, `details` the server's message,
    `refusal_reason` why the server refused it (None: not a refusal, or a reason this client does not know)."""

    def __init__(self, code: grpc.StatusCode, details: str, refusal_reason: RefusalReason | None = None) -> None:
        reason = f" [{refusal_reason.name}]" if refusal_reason is not None else ""
        super().__init__(f"{code.name}{reason}: {details}")
        self.code = code  # the gRPC status code
        self.details = details  # the server's message, e.g. "sampling.top_p must be in (0, 1], got 1.5"
        self.refusal_reason = refusal_reason


class InvalidRequestError(AliseClientError):
    """The request is wrong (INVALID_ARGUMENT)."""


class AuthenticationError(AliseClientError):
    """Missing or wrong API key (UNAUTHENTICATED, PERMISSION_DENIED)."""


class NotFoundError(AliseClientError):
    """The named object does not exist (NOT_FOUND)."""


class RateLimitError(AliseClientError):
    """The server is out of capacity right now (RESOURCE_EXHAUSTED); retry later."""


class UnavailableError(AliseClientError):
    """The gateway or its engines are down, starting or draining (UNAVAILABLE)."""


class DeadlineExceededError(AliseClientError):
    """The call's deadline passed (DEADLINE_EXCEEDED)."""


class RequestCancelledError(AliseClientError):
    """The call was cancelled (CANCELLED)."""


class ServerError(AliseClientError):
    """Any other status (INTERNAL, UNKNOWN, ...): a bug or an unexpected failure on the server."""


_CLASSES: dict[grpc.StatusCode, type[AliseClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: AuthenticationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
}


def from_rpc_error(error: grpc.RpcError) -> AliseClientError:
    """The typed error of a failed call (sync grpc.RpcError or grpc.aio.AioRpcError)."""
    code = error.code()  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    trailing = getattr(error, "trailing_metadata", None)
    reason = refusal_reason_of(trailing()) if callable(trailing) else None
    return _CLASSES.get(code, ServerError)(code, details, reason)
