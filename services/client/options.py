"""How a client connects: address, API key, TLS, retries. Frozen and validated once."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

import grpc

from services.common.grpc_options import GRPC_OPTIONS


@dataclass(frozen=True)
class ClientTls:
    """TLS toward the gateway; PEM file paths ("" = not given)."""

    ca_path: str = ""  # CA bundle the gateway's certificate must chain to ("" = system roots)
    cert_path: str = ""  # client certificate, for a server that requires one (mutual TLS)
    key_path: str = ""  # its private key
    server_name: str = ""  # name to verify in the gateway's certificate instead of the dialed host

    def __post_init__(self) -> None:
        if bool(self.cert_path) != bool(self.key_path):
            raise ValueError("a client certificate needs both cert_path and key_path")
        for name in ("ca_path", "cert_path", "key_path"):
            path = getattr(self, name)
            if path and not pathlib.Path(path).is_file():
                raise ValueError(f"{name} {path!r} is not a file")

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            return pathlib.Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca_path), read(self.key_path), read(self.cert_path))


@dataclass(frozen=True)
class ClientOptions:
    """Everything but the requests themselves."""

    address: str = "127.0.0.1:50051"  # gateway host:port
    api_key: str = ""  # sent as `authorization: Bearer <key>` ("" = none)
    tls: ClientTls | None = None  # None = plaintext
    max_retries: int = 2  # extra attempts on UNAVAILABLE before any message arrived
    retry_backoff_s: float = 0.2  # wait before the first retry; doubles each time
    channel_options: tuple[tuple[str, object], ...] = field(default=GRPC_OPTIONS)  # grpc channel args

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("address must be host:port")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.retry_backoff_s < 0:
            raise ValueError(f"retry_backoff_s must be >= 0, got {self.retry_backoff_s}")

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the API key when one is set."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    @property
    def all_channel_options(self) -> tuple[tuple[str, object], ...]:
        if self.tls is not None and self.tls.server_name:
            return (*self.channel_options, ("grpc.ssl_target_name_override", self.tls.server_name))
        return self.channel_options

    def retry_delay_s(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        return self.retry_backoff_s * 2 ** (attempt - 1)
