"""Python client of the alise gateway (gRPC): sync and async, streaming, typed errors, safe retries.

    from services.client import AliseClient
    with AliseClient("127.0.0.1:50051", api_key="...") as client:
        for chunk in client.generate("Write a haiku about the sea.", max_tokens=32):
            print(chunk.text, end="", flush=True)

`AsyncAliseClient` is the same API with `async with` / `async for`. Errors are subclasses of
AliseClientError, one per gRPC status (errors.py); a refusal's `refusal_reason` (RefusalReason)
says why the server refused, from its `alise-refusal-reason` trailing metadata. A call is retried
only when it is safe to: on UNAVAILABLE before the stream delivered anything (nothing was generated
for the caller yet).
"""

from services.client.async_client import AsyncAliseClient
from services.client.errors import (
    AliseClientError,
    AuthenticationError,
    DeadlineExceededError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    RequestCancelledError,
    ServerError,
    UnavailableError,
)
from services.client.options import ClientOptions, ClientTls
from services.client.requests import Chunk, Completion, FinishReason, build_request
from services.client.sync_client import AliseClient
from services.common.refusal import RefusalReason

__all__ = [
    "AliseClient",
    "AliseClientError",
    "AsyncAliseClient",
    "AuthenticationError",
    "Chunk",
    "ClientOptions",
    "ClientTls",
    "Completion",
    "DeadlineExceededError",
    "FinishReason",
    "InvalidRequestError",
    "NotFoundError",
    "RateLimitError",
    "RefusalReason",
    "RequestCancelledError",
    "ServerError",
    "UnavailableError",
    "build_request",
]
