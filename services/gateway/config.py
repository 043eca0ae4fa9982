"""GatewayConfig: every knob of the gateway, built once at the entry point and validated there."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

from services.common.flags import add_server_flags, validate_port
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

    engine_address: str  # host:port[,host:port...]; every address a name resolves to is one engine replica
    predictor_address: str = ""  # the same for PredictorService replicas; "" = no predictor (fallbacks only)
    predictor_timeout_ms: int = 50  # deadline of one PredictOutputLength call before falling back
    tokenizer: str = ""  # tokenizer spec for load_tokenizer; "" = the one the engine's GetModelInfo names
    default_max_tokens: int = 256  # max_tokens when the client leaves it unset (clipped to the context room)
    max_stop_strings: int = 16  # most stop strings one request may carry
    max_stop_string_chars: int = 256  # longest allowed stop string, in characters
    max_request_id_chars: int = 128  # longest allowed client request_id, in characters
    fallback_output_tokens: int = 256  # output-length prior when neither predictor nor client hint answers
    model_info_timeout_s: float = 2.0  # deadline of one engine GetModelInfo call
    model_info_retry_interval_s: float = 0.5  # after a failed GetModelInfo, wait this long to try again
    host: str = "127.0.0.1"  # interface the gRPC server listens on
    port: int = DEFAULT_PORT  # TCP port (0 = the OS picks one)
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    drain_seconds: float = 5.0  # on SIGTERM, how long in-flight calls may finish
    engine_routing: RoutingPolicy = RoutingPolicy.LEAST_WORK  # how a request picks its replica (its value works too)
    discovery_interval_s: float = 5.0  # between two DNS lookups of the peer names (finds added/removed replicas)
    health_check_interval_s: float = 0.5  # between two health checks (and stats polls) of one replica
    health_check_timeout_s: float = 1.0  # deadline of one health check; silence counts as a failure
    max_health_failures: int = 3  # failed checks in a row that mark a replica down and abort its streams
    max_engine_attempts: int = 2  # engine replicas tried per request before its first message
    feedback_queue_size: int = 4096  # finished-request reports waiting for the predictor; 0 = none sent
    # generations in flight at once (gRPC and HTTP together); the next gets RESOURCE_EXHAUSTED / HTTP 429 at once
    max_in_flight_requests: int = 4096
    # None = DEFAULT_HTTP_PORT, or 0 (any free port) when `port` is 0: several gateways on one host
    # (tests, benchmarks, `alise bench serve --start-stack`) then never fight over port 8000
    http_port: int | None = None  # TCP port of the OpenAI-compatible HTTP API
    http_max_request_bytes: int = DEFAULT_HTTP_MAX_REQUEST_BYTES  # larger HTTP bodies get 413
    # deadline of an HTTP generation that sends no `timeout` field, seconds (vLLM-like clients set none)
    http_request_timeout_s: float = DEFAULT_HTTP_REQUEST_TIMEOUT_S
    api_keys: tuple[str, ...] = ()  # accepted API keys (with api_key_file's); none = no authentication
    api_key_file: str = ""  # file of API keys, one per line ("" = none)
    metrics_require_api_key: bool = False  # /metrics behind the API key too (health is always open)
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
        ):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if not self.model_info_timeout_s > 0:
            raise ValueError(f"model_info_timeout_s must be > 0, got {self.model_info_timeout_s}")
        if not self.model_info_retry_interval_s >= 0:
            raise ValueError(
                f"model_info_retry_interval_s must be >= 0, got {self.model_info_retry_interval_s}"
            )
        if not self.drain_seconds >= 0:
            raise ValueError(f"drain_seconds must be >= 0, got {self.drain_seconds}")
        validate_port(self.port)
        if self.http_port is not None:
            validate_port(self.http_port)
        if self.http_max_request_bytes <= 0:
            raise ValueError(f"http_max_request_bytes must be > 0, got {self.http_max_request_bytes}")
        if not self.http_request_timeout_s > 0:
            raise ValueError(f"http_request_timeout_s must be > 0, got {self.http_request_timeout_s}")
        if any(not key for key in self.api_keys):
            raise ValueError("api_keys must be non-empty strings")
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
        add_server_flags(parser, default_port=DEFAULT_PORT)
        parser.add_argument(
            "--engine-address", required=True,
            help="host:port[,host:port...] of the engines; a name resolving to several addresses "
            "(compose service, Kubernetes headless Service) is one replica per address",
        )
        parser.add_argument("--predictor-address", default="", help="the same for predictors ('' = none)")
        _add_replica_flags(parser)
        parser.add_argument("--predictor-timeout-ms", type=int, default=50)
        parser.add_argument("--tokenizer", default="", help="tokenizer spec ('' = ask the engine)")
        parser.add_argument("--default-max-tokens", type=int, default=256)
        parser.add_argument("--max-stop-strings", type=int, default=16)
        parser.add_argument("--max-stop-string-chars", type=int, default=256)
        parser.add_argument("--max-request-id-chars", type=int, default=128)
        parser.add_argument("--fallback-output-tokens", type=int, default=256)
        parser.add_argument("--model-info-timeout-s", type=float, default=2.0)
        parser.add_argument("--feedback-queue-size", type=int, default=4096,
                            help="finished requests queued for the predictor's feedback (0 = off)")
        parser.add_argument("--max-in-flight-requests", type=int, default=4096,
                            help="generations in flight at once; more get RESOURCE_EXHAUSTED (HTTP 429) at once")
        _add_http_and_auth_flags(parser)
        add_tls_flags(parser)
        args = parser.parse_args(argv)
        try:
            return cls(
                engine_address=args.engine_address,
                predictor_address=args.predictor_address,
                predictor_timeout_ms=args.predictor_timeout_ms,
                tokenizer=args.tokenizer,
                default_max_tokens=args.default_max_tokens,
                max_stop_strings=args.max_stop_strings,
                max_stop_string_chars=args.max_stop_string_chars,
                max_request_id_chars=args.max_request_id_chars,
                fallback_output_tokens=args.fallback_output_tokens,
                model_info_timeout_s=args.model_info_timeout_s,
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                drain_seconds=args.drain_seconds,
                **{name: getattr(args, name) for name in _REPLICA_FIELDS},
                feedback_queue_size=args.feedback_queue_size,
                max_in_flight_requests=args.max_in_flight_requests,
                http_port=args.http_port,
                http_max_request_bytes=args.http_max_request_bytes,
                http_request_timeout_s=args.http_request_timeout_s,
                api_keys=tuple(args.api_key),
                api_key_file=args.api_key_file,
                metrics_require_api_key=args.metrics_require_api_key,
                tls=tls_from_args(args),
            )
        except ValueError as error:
            parser.error(str(error))
            raise  # unreachable: parser.error exits


_REPLICA_FIELDS = (
    "engine_routing",
    "discovery_interval_s",
    "health_check_interval_s",
    "health_check_timeout_s",
    "max_health_failures",
    "max_engine_attempts",
)


def _add_replica_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of replica discovery, health checking and routing (dest names = _REPLICA_FIELDS)."""
    parser.add_argument("--engine-routing", default=RoutingPolicy.LEAST_WORK.value, choices=ROUTING_POLICIES)
    parser.add_argument("--discovery-interval-s", type=float, default=5.0, help="DNS re-resolve period")
    parser.add_argument("--health-check-interval-s", type=float, default=0.5)
    parser.add_argument("--health-check-timeout-s", type=float, default=1.0)
    parser.add_argument("--max-health-failures", type=int, default=3, help="failed checks = replica down")
    parser.add_argument("--max-engine-attempts", type=int, default=2, help="replicas tried per request")


def _add_http_and_auth_flags(parser: argparse.ArgumentParser) -> None:
    """The OpenAI-compatible HTTP port and API keys (gRPC and HTTP alike)."""
    parser.add_argument(
        "--http-port", type=int, default=None,
        help=f"OpenAI-compatible HTTP port (default {DEFAULT_HTTP_PORT}; 0 = any free; "
        "with --port 0 the default is 0 too)",
    )
    parser.add_argument("--http-max-request-bytes", type=int, default=DEFAULT_HTTP_MAX_REQUEST_BYTES,
                        help="larger HTTP request bodies get 413")
    parser.add_argument("--http-request-timeout-s", type=float, default=DEFAULT_HTTP_REQUEST_TIMEOUT_S,
                        help="deadline of an HTTP generation without a `timeout` body field (expiry: 504)")
    parser.add_argument("--api-key", action="append", default=[], metavar="KEY",
                        help="accepted API key (repeatable); clients send 'authorization: Bearer KEY'")
    parser.add_argument("--api-key-file", default="", help="file of accepted API keys, one per line")
    parser.add_argument("--metrics-require-api-key", action="store_true",
                        help="serve /metrics only with a valid API key (default: open)")
