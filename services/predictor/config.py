"""Configuration of the predictor service: one frozen dataclass, built once at the entry point."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from services.common.flags import add_server_flags, validate_port
from services.common.tls import TlsFiles, add_tls_flags, tls_from_args
from services.common.metrics_server import (
    PREDICTOR_METRICS_PORT,
    MetricsPort,
    add_metrics_port_flag,
    metrics_port_from_flag,
)
from services.predictor.embedding import default_cache_dir

DEFAULT_PORT = 50053
# The model shipped inside the package: a fresh clone predicts without ../shared.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"


@dataclass(frozen=True)
class PredictorConfig:
    """Everything `app.start` needs; validated on construction."""

    host: str = "127.0.0.1"  # interface to listen on
    port: int = DEFAULT_PORT  # TCP port; 0 = the OS picks a free one
    log_level: str = "INFO"  # logging level name
    drain_s: float = 5.0  # on SIGTERM, how long in-flight calls may finish
    model_dir: Path = DEFAULT_MODEL_DIR  # directory holding model.onnx + metadata.json
    cache_dir: Path | None = None  # embedding graph cache; None = embedding.default_cache_dir()
    intra_op_threads: int = 1  # ONNX Runtime threads of the tree graph (trees gain little from more)
    embedding_threads: int = 2  # prompts of a batch embedded at once, one core each (a lone prompt uses one)
    allow_cuda: bool = True  # use CUDAExecutionProvider when onnxruntime has it
    # Generator column (workload) lengths are predicted for, e.g. "alpaca_eval:text_davinci_003";
    # "" = the model's own default.
    default_generator: str = ""
    max_inputs_per_request: int = 256  # larger requests get INVALID_ARGUMENT
    max_batch_inputs: int = 1024  # most prompts merged into one prediction batch (micro-batching)
    reload_poll_interval_s: float = 2.0  # how often the model files are checked for change; 0 = never
    feedback_dir: Path | None = None  # where finished-request reports are stored; None = not stored
    live_window_size: int = 1000  # finished requests behind the live accuracy in GetStats
    max_feedback_per_request: int = 4096  # larger ReportFeedback calls get INVALID_ARGUMENT
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
        add_server_flags(parser, default_port=DEFAULT_PORT)
        add_metrics_port_flag(parser, default_port=PREDICTOR_METRICS_PORT)
        add_tls_flags(parser)
        parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model directory")
        parser.add_argument("--cache-dir", type=Path, default=None,
                            help="embedding graph cache (default $ALISE_CACHE_DIR or ~/.cache/alise)")
        parser.add_argument("--intra-op-threads", type=int, default=1, help="ONNX Runtime threads of the trees")
        parser.add_argument("--embedding-threads", type=int, default=2,
                            help="prompts of a batch embedded at once, one core each (a lone prompt uses one)")
        parser.add_argument("--cpu-only", action="store_true", help="never use the CUDA execution provider")
        parser.add_argument("--default-generator", default="",
                            help="generator column to predict for when a request's served model maps to none "
                                 "(e.g. alpaca_eval:text_davinci_003 for an Alpaca workload; '' = the model's default)")
        parser.add_argument("--max-inputs-per-request", type=int, default=256, help="prompts per request")
        parser.add_argument("--max-batch-inputs", type=int, default=1024, help="prompts per prediction batch")
        parser.add_argument("--reload-poll-interval-s", type=float, default=2.0,
                            help="check the model files for change this often (0 = never; ReloadModel RPC still works)")
        parser.add_argument("--feedback-dir", type=Path, default=None,
                            help="store reported finished requests here (JSONL; default: not stored)")
        parser.add_argument("--live-window-size", type=int, default=1000, help="requests behind the live accuracy")
        args = parser.parse_args(argv)
        return cls(
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            drain_s=args.drain_seconds,
            model_dir=args.model_dir,
            cache_dir=args.cache_dir,
            intra_op_threads=args.intra_op_threads,
            embedding_threads=args.embedding_threads,
            allow_cuda=not args.cpu_only,
            default_generator=args.default_generator,
            max_inputs_per_request=args.max_inputs_per_request,
            max_batch_inputs=args.max_batch_inputs,
            reload_poll_interval_s=args.reload_poll_interval_s,
            feedback_dir=args.feedback_dir,
            live_window_size=args.live_window_size,
            metrics_port=metrics_port_from_flag(args.metrics_port, default_port=PREDICTOR_METRICS_PORT),
            tls=tls_from_args(args),
        )
