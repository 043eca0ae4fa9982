"""Configuration of the predictor service: one frozen dataclass, built once at the entry point."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from services.common.flags import add_server_flags, validate_port

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
    intra_op_threads: int = 1  # ONNX Runtime threads per call (tree ensembles gain little from more)
    allow_cuda: bool = True  # use CUDAExecutionProvider when onnxruntime has it
    max_inputs_per_request: int = 256  # larger requests get INVALID_ARGUMENT
    max_batch_inputs: int = 1024  # most prompts merged into one ONNX Runtime call (micro-batching)

    def __post_init__(self) -> None:
        validate_port(self.port)
        if self.drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s}")
        if self.intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {self.intra_op_threads}")
        if self.max_inputs_per_request < 1:
            raise ValueError(f"max_inputs_per_request must be >= 1, got {self.max_inputs_per_request}")
        if self.max_batch_inputs < self.max_inputs_per_request:
            raise ValueError(
                f"max_batch_inputs ({self.max_batch_inputs}) must be >= max_inputs_per_request "
                f"({self.max_inputs_per_request}) so that every valid request fits in one batch"
            )

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> "PredictorConfig":
        """Parses `python -m services.predictor` flags (argv None = sys.argv[1:])."""
        parser = argparse.ArgumentParser(
            prog="python -m services.predictor", description="alise output-length predictor service"
        )
        add_server_flags(parser, default_port=DEFAULT_PORT)
        parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model directory")
        parser.add_argument("--intra-op-threads", type=int, default=1, help="ONNX Runtime threads per call")
        parser.add_argument("--cpu-only", action="store_true", help="never use the CUDA execution provider")
        parser.add_argument("--max-inputs-per-request", type=int, default=256, help="prompts per request")
        parser.add_argument("--max-batch-inputs", type=int, default=1024, help="prompts per ONNX call")
        args = parser.parse_args(argv)
        return cls(
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            drain_s=args.drain_seconds,
            model_dir=args.model_dir,
            intra_op_threads=args.intra_op_threads,
            allow_cuda=not args.cpu_only,
            max_inputs_per_request=args.max_inputs_per_request,
            max_batch_inputs=args.max_batch_inputs,
        )
