"""OpenAI-shaped errors: the one place that maps alise's errors to HTTP statuses.

OpenAI clients read `{"error": {"message", "type", "param", "code"}}` and the HTTP status; the SDKs
raise a class per status (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
429 RateLimitError, 5xx InternalServerError...). AliseError subclasses carry a gRPC status code,
so the table is keyed by that code: a new AliseError subclass needs no HTTP change. A refusal's
reason (services/common/refusal.py) becomes the body's `code` ("queue_full") and the
`alise-refusal-reason` header, so a client tells a full queue from a drain without reading prose.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import grpc
from starlette.responses import JSONResponse

from services.common.errors import AliseError
from services.common.refusal import REFUSAL_REASON_KEY, RefusalReason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpStatus:
    """How one gRPC status code looks to an OpenAI client."""

    status: int  # HTTP status code
    error_type: str  # the `type` field of the error body


GRPC_TO_HTTP: dict[grpc.StatusCode, HttpStatus] = {
    grpc.StatusCode.INVALID_ARGUMENT: HttpStatus(400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: HttpStatus(401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: HttpStatus(403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: HttpStatus(404, "not_found_error"),
    grpc.StatusCode.ALREADY_EXISTS: HttpStatus(409, "conflict_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: HttpStatus(429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: HttpStatus(503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: HttpStatus(504, "timeout_error"),
}
INTERNAL = HttpStatus(500, "internal_server_error")

# Validation messages start with the GenerateRequest field they blame ("sampling.top_p must be ...");
# the OpenAI `param` is the body field of the same meaning.
_PARAM_OF_FIELD = {
    "sampling.max_tokens": "max_tokens",
    "sampling.temperature": "temperature",
    "sampling.top_p": "top_p",
    "sampling.top_k": "top_k",
    "sampling.min_tokens": "min_tokens",
    "sampling.stop": "stop",
    "prompt_text": "prompt",
    "prompt_token_ids": "prompt",
    "prompt has": "prompt",
    "messages": "messages",
    "request_id": "request_id",
    "priority_class": "priority",
    "expected_output_tokens": "expected_output_tokens",
}
_FIELD_PATTERN = re.compile(r"^(sampling\.\w+|prompt has|\w+)")


class HttpApiError(Exception):
    """An error raised by the HTTP layer itself (body shape, unknown model, unsupported parameter)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str,
        param: str | None = None,
        code: str | None = None,
        refusal_reason: RefusalReason | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status  # HTTP status code
        self.error_type = error_type  # OpenAI error `type`
        self.param = param  # body field at fault, None when not one field
        self.code = code  # OpenAI error `code` (e.g. "model_not_found"), None when none applies
        self.refusal_reason = refusal_reason  # a refusal's reason: the alise-refusal-reason header


def invalid_parameter(message: str, param: str | None, code: str | None = None) -> HttpApiError:
    """A 400 naming the body field at fault."""
    return HttpApiError(400, message, error_type="invalid_request_error", param=param, code=code)


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    """The JSON body every error response carries (also sent as an SSE event mid-stream)."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def from_exception(error: Exception) -> HttpApiError:
    """Any exception as an HttpApiError; an unexpected one (a bug) becomes 500 and is logged."""
    if isinstance(error, HttpApiError):
        return error
    if isinstance(error, AliseError):
        mapped = GRPC_TO_HTTP.get(error.status_code, INTERNAL)
        message = str(error)
        param = _param_of(message) if mapped.status == 400 else None
        reason = error.refusal_reason  # a refusal: its reason as the OpenAI `code` and a header
        code = reason.openai_code if reason is not None else None
        return HttpApiError(
            mapped.status, message, error_type=mapped.error_type, param=param, code=code, refusal_reason=reason
        )
    log.error("unexpected error in an HTTP request", exc_info=error)
    return HttpApiError(500, f"internal error: {type(error).__name__}", error_type=INTERNAL.error_type)


def error_response(error: HttpApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The HTTP response of an error (a refusal's reason also in the alise-refusal-reason header)."""
    body = error_body(str(error), error.error_type, error.param, error.code)
    if error.refusal_reason is not None:
        headers = {**(headers or {}), REFUSAL_REASON_KEY: error.refusal_reason.value}
    return JSONResponse(body, status_code=error.status, headers=headers)


def _param_of(message: str) -> str | None:
    match = _FIELD_PATTERN.match(message)
    if match is None:
        return None
    return _PARAM_OF_FIELD.get(match.group(1).split("[")[0])
