"""GatewayConfig: every knob of the gateway, built once at the entry point and validated there."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

from services.common.flags import add_server_flags, is_host_port, validate_port

DEFAULT_PORT = 50051


@dataclass(frozen=True)
class GatewayConfig:
    """Configuration of one gateway process; invalid values raise ValueError in __post_init__."""

    engine_address: str  # host:port of the EngineService replica requests are forwarded to
    predictor_address: str = ""  # host:port of the PredictorService; "" = no predictor (fallbacks only)
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

    def __post_init__(self) -> None:
        if not is_host_port(self.engine_address):
            raise ValueError(f"engine_address must be host:port, got {self.engine_address!r}")
        if self.predictor_address and not is_host_port(self.predictor_address):
            raise ValueError(f"predictor_address must be host:port or empty, got {self.predictor_address!r}")
        for name in (
            "predictor_timeout_ms",
            "default_max_tokens",
            "max_stop_strings",
            "max_stop_string_chars",
            "max_request_id_chars",
            "fallback_output_tokens",
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

    @property
    def predictor_timeout_s(self) -> float:
        """predictor_timeout_ms in seconds, as gRPC timeouts want it."""
        return self.predictor_timeout_ms / 1000.0

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> "GatewayConfig":
        """Parses `python -m services.gateway` flags; argparse exits with a usage message on bad flags."""
        parser = argparse.ArgumentParser(prog="python -m services.gateway", description=__doc__)
        add_server_flags(parser, default_port=DEFAULT_PORT)
        parser.add_argument("--engine-address", required=True, help="host:port of the engine")
        parser.add_argument("--predictor-address", default="", help="host:port of the predictor ('' = none)")
        parser.add_argument("--predictor-timeout-ms", type=int, default=50)
        parser.add_argument("--tokenizer", default="", help="tokenizer spec ('' = ask the engine)")
        parser.add_argument("--default-max-tokens", type=int, default=256)
        parser.add_argument("--max-stop-strings", type=int, default=16)
        parser.add_argument("--max-stop-string-chars", type=int, default=256)
        parser.add_argument("--max-request-id-chars", type=int, default=128)
        parser.add_argument("--fallback-output-tokens", type=int, default=256)
        parser.add_argument("--model-info-timeout-s", type=float, default=2.0)
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
            )
        except ValueError as error:
            parser.error(str(error))
            raise  # unreachable: parser.error exits

