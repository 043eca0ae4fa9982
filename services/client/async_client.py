"""AsyncAliseClient: the gateway's gRPC API for asyncio code.

One channel per client (reuse the client: a channel per request would add a TCP and HTTP/2
handshake to every call). Leaving `async for` early (break, exception, task cancelled) cancels the
call, which cancels the generation in the engine and frees its KV.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import grpc

from services.client.errors import from_rpc_error
from services.client.options import ClientOptions, ClientTls
from services.client.requests import Chunk, Completion, build_request
from services.common.contracts import gateway_service_pb2, gateway_service_pb2_grpc


class AsyncAliseClient:
    """`async with AsyncAliseClient(address, api_key=...) as client: async for chunk in client.generate(...)`."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        api_key: str = "",
        tls: ClientTls | None = None,
        max_retries: int = 2,
        retry_backoff_s: float = 0.2,
    ) -> None:
        self.options = ClientOptions(address, api_key, tls, max_retries, retry_backoff_s)
        if tls is None:
            self._channel = grpc.aio.insecure_channel(address, options=self.options.all_channel_options)
        else:
            self._channel = grpc.aio.secure_channel(
                address, tls.credentials(), options=self.options.all_channel_options
            )
        self._stub = gateway_service_pb2_grpc.GatewayServiceStub(self._channel)

    async def __aenter__(self) -> "AsyncAliseClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def model_info(self, *, timeout_s: float | None = 30.0) -> gateway_service_pb2.GetModelInfoResponse:
        """The served model (name, context, vocabulary, chat template); retried on UNAVAILABLE."""
        for attempt in range(self.options.max_retries + 1):
            try:
                return await self._stub.GetModelInfo(
                    gateway_service_pb2.GetModelInfoRequest(), timeout=timeout_s, metadata=self.options.metadata
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.options.max_retries:
                    raise from_rpc_error(error) from None
            await asyncio.sleep(self.options.retry_delay_s(attempt + 1))
        raise AssertionError("unreachable")

    async def generate(
        self,
        prompt: str | gateway_service_pb2.GenerateRequest | None = None,
        *,
        timeout_s: float | None = None,
        **params: Any,
    ) -> AsyncIterator[Chunk]:
        """Streams the chunks of one generation; `params` are build_request's keyword arguments.

        timeout_s is the deadline of the whole call, retries included (None = no deadline).
        """
        request = prompt if isinstance(prompt, gateway_service_pb2.GenerateRequest) else build_request(prompt, **params)
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        attempt = 0
        while True:
            remaining_s = None if deadline_s is None else max(0.0, deadline_s - time.monotonic())
            call = self._stub.Generate(request, timeout=remaining_s, metadata=self.options.metadata)
            received = False
            try:
                async for response in call:
                    received = True
                    yield Chunk.from_response(response)
                return
            except grpc.aio.AioRpcError as error:
                if not self._may_retry(error, received, attempt):
                    raise from_rpc_error(error) from None
            finally:
                call.cancel()  # no-op once the call has ended; cancels it when the caller left early
            attempt += 1
            await asyncio.sleep(self.options.retry_delay_s(attempt))

    async def complete(
        self, prompt: str | gateway_service_pb2.GenerateRequest | None = None, **kwargs: Any
    ) -> Completion:
        """The whole generation at once (same arguments as generate)."""
        return Completion.from_chunks([chunk async for chunk in self.generate(prompt, **kwargs)])

    def _may_retry(self, error: grpc.aio.AioRpcError, received: bool, attempt: int) -> bool:
        """Only UNAVAILABLE before any message: the request produced nothing the caller has seen."""
        return error.code() == grpc.StatusCode.UNAVAILABLE and not received and attempt < self.options.max_retries
