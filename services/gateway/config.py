"""GatewayConfig: every knob of the gateway, built once at the entry point and validated there."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

from services.common.config_flags import add_config_flags, config_values, setting
from services.common.flags import DRAIN_HELP, HOST_HELP, LOG_LEVEL_HELP, PORT_HELP, validate_port
from services.common.tls import TlsFiles, add_tls_flags, tls_from_args
from services.gateway.replica_discovery import parse_targets
from services.gateway.routing import ROUTING_POLICIES, RoutingPolicy

DEFAULT_PORT = 50051
DEFAULT_HTTP_PORT = 8000
DEFAULT_HTTP_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a 32k-token prompt as JSON text is ~0.2 MB
DEFAULT_HTTP_REQUEST_TIMEOUT_S = 600.0  # long enough for a long generation on a busy server


@dataclass(frozen=True)
class GatewayConfig:
    """Configuration of one gateway process; invalid values raise ValueError in __post_init__."""

    # Each field's flag (--field-name) is generated from its default and help (config_flags.py).
    engine_address: str = setting(
        help="host:port[,host:port...] of the engines; a name resolving to several addresses "
        "(compose service, Kubernetes headless Service) is one replica per address",
    )
    predictor_address: str = setting(
        "", "the same for PredictorService replicas ('' = no predictor: output-length fallbacks only)"
    )
    predictor_timeout_ms: int = setting(50, "deadline of one PredictOutputLength call before falling back")
    tokenizer: str = setting("", "tokenizer spec ('' = the one the engine's GetModelInfo names)")
    default_max_tokens: int = setting(256, "max_tokens when the client leaves it unset (clipped to the context room)")
    max_stop_strings: int = setting(16, "most stop strings one request may carry")
    max_stop_string_chars: int = setting(256, "longest allowed stop string, in characters")
    max_request_id_chars: int = setting(128, "longest allowed client request_id, in characters")
    fallback_output_tokens: int = setting(
        256, "output-length prior when neither the predictor nor a client hint answers"
    )
    model_info_timeout_s: float = setting(2.0, "deadline of one engine GetModelInfo call, seconds")
    model_info_retry_interval_s: float = 0.5  # after a failed GetModelInfo, wait this long to try again (no flag)
    host: str = setting("127.0.0.1", HOST_HELP)
    port: int = setting(DEFAULT_PORT, PORT_HELP)
    log_level: str = setting("INFO", LOG_LEVEL_HELP)
    drain_seconds: float = setting(5.0, DRAIN_HELP)
    engine_routing: RoutingPolicy = setting(RoutingPolicy.LEAST_WORK, "how a request picks its engine replica")
    discovery_interval_s: float = setting(
        5.0, "between two DNS lookups of the peer names (finds added and removed replicas), seconds"
    )
    health_check_interval_s: float = setting(0.5, "between two health checks (and stats polls) of one replica, seconds")
    health_check_timeout_s: float = setting(1.0, "deadline of one health check (silence counts as a failure), seconds")
    max_health_failures: int = setting(3, "failed checks in a row that mark a replica down and abort its streams")
    max_engine_attempts: int = setting(2, "engine replicas tried per request before its first message")
    feedback_queue_size: int = setting(4096, "finished requests queued for the predictor's feedback (0 = off)")
    max_in_flight_requests: int = setting(
        4096, "generations in flight at once (gRPC and HTTP together); more get RESOURCE_EXHAUSTED (HTTP 429) at once"
    )
    max_in_flight_request_bytes: int = setting(
        64 * 1024 * 1024,
        "serialized request bytes (the prompts, mostly) of the generations in flight at once; a request that would "
        "pass it gets RESOURCE_EXHAUSTED (HTTP 429) at once, before tokenizing",
    )
    max_queued_work_s: float = setting(
        0.0,
        "predicted wait of a new request for its first token on an engine replica (the work of this gateway's "
        "requests without a token yet, or, when its running batch is full, the time until one of them ends) beyond "
        "which new requests go elsewhere, or get RESOURCE_EXHAUSTED (HTTP 429) at once before tokenizing when "
        "every replica is over it (0 = no bound)",
    )
    max_queued_steps: float = setting(
        0.0,
        "when an engine replica's running batch is full: the predicted number of its steps until a place frees "
        "for a new request (places are taken by this gateway's waiting requests first) beyond which new requests "
        "go elsewhere, or get RESOURCE_EXHAUSTED (HTTP 429) at once; 1 = only when a place frees at the end of the "
        "step under way (0 = no bound)",
    )
    # None = DEFAULT_HTTP_PORT, or 0 (any free port) when `port` is 0: several gateways on one host
    # (tests, benchmarks, `alise bench serve --start-stack`) then never fight over port 8000
    http_port: int | None = setting(
        None,
        f"OpenAI-compatible HTTP port (default {DEFAULT_HTTP_PORT}; 0 = any free; with --port 0 the default is 0 too)",
    )
    http_max_request_bytes: int = setting(DEFAULT_HTTP_MAX_REQUEST_BYTES, "larger HTTP request bodies get 413")
    http_request_timeout_s: float = setting(
        DEFAULT_HTTP_REQUEST_TIMEOUT_S,
        "deadline of an HTTP generation without a `timeout` body field (expiry: 504), seconds",
    )
    http_body_timeout_s: float = setting(
        30.0, "a request body not complete this long after its headers gets 408 and the connection closed, seconds"
    )
    api_keys: tuple[str, ...] = setting(
        (),
        "accepted API key (repeatable; with --api-key-file's; none = no authentication); "
        "clients send 'authorization: Bearer KEY'",
        flag="--api-key",
        metavar="KEY",
    )
    api_key_file: str = setting("", "file of accepted API keys, one per line")
    metrics_require_api_key: bool = setting(False, "serve /metrics only with a valid API key (default: open)")
    tls: TlsFiles | None = None  # TLS of the public gRPC and HTTP ports, and mTLS to engines/predictors

    def __post_init__(self) -> None:
        for name in ("engine_address", "predictor_address"):
            try:
                targets = parse_targets(getattr(self, name))
            except ValueError as error:
                raise ValueError(f"{name} must be host:port[,host:port...]: {error}") from None
            if name == "engine_address" and not targets:
                raise ValueError("engine_address must be host:port[,host:port...], got ''")
        self._validate_replica_settings()
        for name in (
            "predictor_timeout_ms",
            "default_max_tokens",
            "max_stop_strings",
            "max_stop_string_chars",
            "max_request_id_chars",
            "fallback_output_tokens",
            "max_in_flight_requests",
            "max_in_flight_request_bytes",
        ):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not self.model_info_timeout_s > 0:
            raise ValueError(f"model_info_timeout_s must be > 0, got {self.model_info_timeout_s}")
        if not self.model_info_retry_interval_s >= 0:
            raise ValueError(f"model_info_retry_interval_s must be >= 0, got {self.model_info_retry_interval_s}")
        if not self.drain_seconds >= 0:
            raise ValueError(f"drain_seconds must be >= 0, got {self.drain_seconds}")
        validate_port(self.port)
        if self.http_port is not None:
            validate_port(self.http_port)
        if self.http_max_request_bytes <= 0:
            raise ValueError(f"http_max_request_bytes must be > 0, got {self.http_max_request_bytes}")
        if not self.http_request_timeout_s > 0:
            raise ValueError(f"http_request_timeout_s must be > 0, got {self.http_request_timeout_s}")
        if not self.http_body_timeout_s > 0:
            raise ValueError(f"http_body_timeout_s must be > 0, got {self.http_body_timeout_s}")
        if any(not key for key in self.api_keys):
            raise ValueError("api_keys must be non-empty strings")
        if not self.max_queued_work_s >= 0:
            raise ValueError(f"max_queued_work_s must be >= 0, got {self.max_queued_work_s}")
        if not self.max_queued_steps >= 0:
            raise ValueError(f"max_queued_steps must be >= 0, got {self.max_queued_steps}")
        if self.feedback_queue_size < 0:
            raise ValueError(f"feedback_queue_size must be >= 0, got {self.feedback_queue_size}")

    def _validate_replica_settings(self) -> None:
        if self.engine_routing not in ROUTING_POLICIES:
            raise ValueError(f"engine_routing must be one of {ROUTING_POLICIES}, got {self.engine_routing!r}")
        object.__setattr__(self, "engine_routing", RoutingPolicy(self.engine_routing))  # "round-robin" -> member
        for name in ("discovery_interval_s", "health_check_interval_s", "health_check_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_health_failures", "max_engine_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def http_listen_port(self) -> int:
        """The HTTP port to bind: http_port, else 8000, or 0 when the gRPC port is 0."""
        if self.http_port is not None:
            return self.http_port
        return 0 if self.port == 0 else DEFAULT_HTTP_PORT

    @property
    def predictor_timeout_s(self) -> float:
        """predictor_timeout_ms in seconds, as gRPC timeouts want it."""
        return self.predictor_timeout_ms / 1000.0

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> "GatewayConfig":
        """Parses `python -m services.gateway` flags; argparse exits with a usage message on bad flags."""
        parser = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__)
        add_config_flags(parser, cls)
        add_tls_flags(parser)
        args = parser.parse_args(argv)
        try:
            return cls(**config_values(cls, args), tls=tls_from_args(args))
        except ValueError as error:
            parser.error(str(error))
            raise  # unreachable: parser.error exits
