"""AliseClient: the gateway's gRPC API for plain (threaded, non-asyncio) code.

Same behaviour as AsyncAliseClient: one channel per client, typed errors, retries only on
UNAVAILABLE before any message, and closing the iterator early cancels the generation.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import grpc

from services.client.errors import from_rpc_error
from services.client.options import ClientOptions, ClientTls
from services.client.requests import Chunk, Completion, build_request
from services.common.contracts import gateway_service_pb2, gateway_service_pb2_grpc


class AliseClient:
    """`with AliseClient(address, api_key=...) as client: for chunk in client.generate(...)`."""

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
            self._channel = grpc.insecure_channel(address, options=self.options.all_channel_options)
        else:
            self._channel = grpc.secure_channel(address, tls.credentials(), options=self.options.all_channel_options)
        self._stub = gateway_service_pb2_grpc.GatewayServiceStub(self._channel)

    def __enter__(self) -> "AliseClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def model_info(self, *, timeout_s: float | None = 30.0) -> gateway_service_pb2.GetModelInfoResponse:
        """The served model; retried on UNAVAILABLE."""
        for attempt in range(self.options.max_retries + 1):
            try:
                return self._stub.GetModelInfo(
                    gateway_service_pb2.GetModelInfoRequest(), timeout=timeout_s, metadata=self.options.metadata
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.options.max_retries:  # type: ignore[attr-defined]
                    raise from_rpc_error(error) from None
            time.sleep(self.options.retry_delay_s(attempt + 1))
        raise AssertionError("unreachable")

    def generate(
        self,
        prompt: str | gateway_service_pb2.GenerateRequest | None = None,
        *,
        timeout_s: float | None = None,
        **params: Any,
    ) -> Iterator[Chunk]:
        """Streams the chunks of one generation (see AsyncAliseClient.generate)."""
        request = prompt if isinstance(prompt, gateway_service_pb2.GenerateRequest) else build_request(prompt, **params)
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        attempt = 0
        while True:
            remaining_s = None if deadline_s is None else max(0.0, deadline_s - time.monotonic())
            call = self._stub.Generate(request, timeout=remaining_s, metadata=self.options.metadata)
            received = False
            try:
                for response in call:
                    received = True
                    yield Chunk.from_response(response)
                return
            except grpc.RpcError as error:
                retryable = error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                if received or not retryable or attempt >= self.options.max_retries:
                    raise from_rpc_error(error) from None
            finally:
                call.cancel()  # no-op once ended; cancels the generation when the caller left early
            attempt += 1
            time.sleep(self.options.retry_delay_s(attempt))

    def complete(self, prompt: str | gateway_service_pb2.GenerateRequest | None = None, **kwargs: Any) -> Completion:
        """The whole generation at once (same arguments as generate)."""
        return Completion.from_chunks(list(self.generate(prompt, **kwargs)))
