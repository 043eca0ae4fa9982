"""Configuration of the predictor service: one frozen dataclass, built once at the entry point."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from services.common.config_flags import add_config_flags, config_values, setting
from services.common.flags import DRAIN_HELP, HOST_HELP, LOG_LEVEL_HELP, PORT_HELP, validate_port
from services.common.metrics_server import (
    PREDICTOR_METRICS_PORT,
    MetricsPort,
    add_metrics_port_flag,
    metrics_port_from_flag,
)
from services.common.tls import TlsFiles, add_tls_flags, tls_from_args
from services.predictor.embedding import default_cache_dir
from services.predictor.lone_prompt import AUTO

DEFAULT_PORT = 50053
# The model shipped inside the package: a fresh clone predicts without ../shared.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"


@dataclass(frozen=True)
class PredictorConfig:
    """Everything `app.start` needs; validated on construction."""

    # Each field's flag (--field-name) is generated from its default and help (config_flags.py).
    host: str = setting("127.0.0.1", HOST_HELP)
    port: int = setting(DEFAULT_PORT, PORT_HELP)
    log_level: str = setting("INFO", LOG_LEVEL_HELP)
    drain_s: float = setting(5.0, DRAIN_HELP, flag="--drain-seconds")
    model_dir: Path = setting(DEFAULT_MODEL_DIR, "model directory (model.onnx + metadata.json)")
    cache_dir: Path | None = setting(None, "embedding graph cache (default $ALISE_CACHE_DIR or ~/.cache/alise)")
    intra_op_threads: int = setting(1, "ONNX Runtime threads of the tree graph (trees gain little from more)")
    embedding_threads: int = setting(2, "prompts of a batch embedded at once, one core each")
    lone_prompt_threads: int = setting(
        AUTO,
        "ONNX Runtime threads of a prompt that arrives alone: 0 = measured at load (embedding_threads where "
        "that beats one thread on this CPU, else 1)",
    )
    allow_cuda: bool = setting(True, "never use the CUDA execution provider", flag="--cpu-only", negate=True)
    default_generator: str = setting(
        "",
        "generator column to predict for when a request's served model maps to none "
        "(e.g. alpaca_eval:text_davinci_003 for an Alpaca workload; '' = the model's default)",
    )
    max_inputs_per_request: int = setting(256, "prompts per request; larger requests get INVALID_ARGUMENT")
    max_batch_inputs: int = setting(1024, "most prompts merged into one prediction batch (micro-batching)")
    reload_poll_interval_s: float = setting(
        2.0, "check the model files for change this often (0 = never; ReloadModel RPC still works)"
    )
    feedback_dir: Path | None = setting(None, "store reported finished requests here (JSONL; default: not stored)")
    live_window_size: int = setting(1000, "finished requests behind the live accuracy in GetStats")
    # larger ReportFeedback calls get INVALID_ARGUMENT (no flag, as before)
    max_feedback_per_request: int = 4096
    # /metrics HTTP port on `host`; None = not served (the --metrics-port flag defaults to 9103)
    metrics_port: MetricsPort | None = None
    # TLS of its gRPC port; with a CA, clients (engines, gateways) must present a certificate of it
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        validate_port(self.port)
        if self.drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s}")
        for name in ("intra_op_threads", "embedding_threads", "max_inputs_per_request", "max_feedback_per_request"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lone_prompt_threads < 0:
            raise ValueError(f"lone_prompt_threads must be >= 0 (0 = measured), got {self.lone_prompt_threads}")
        if self.max_batch_inputs < self.max_inputs_per_request:
            raise ValueError(
                f"max_batch_inputs ({self.max_batch_inputs}) must be >= max_inputs_per_request "
                f"({self.max_inputs_per_request}) so that every valid request fits in one batch"
            )
        if self.reload_poll_interval_s < 0:
            raise ValueError(f"reload_poll_interval_s must be >= 0, got {self.reload_poll_interval_s}")
        if self.live_window_size < 2:
            raise ValueError(f"live_window_size must be >= 2, got {self.live_window_size}")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> "PredictorConfig":
        """Parses `python -m services.predictor` flags (argv None = sys.argv[1:])."""
        parser = argparse.ArgumentParser(
            prog="python -m services.predictor", description="alise output-length predictor service"
        )
        add_config_flags(parser, cls)
        add_metrics_port_flag(parser, default_port=PREDICTOR_METRICS_PORT)
        add_tls_flags(parser)
        args = parser.parse_args(argv)
        return cls(
            **config_values(cls, args),
            metrics_port=metrics_port_from_flag(args.metrics_port, default_port=PREDICTOR_METRICS_PORT),
            tls=tls_from_args(args),
        )
