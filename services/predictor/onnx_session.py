"""ONNX Runtime sessions made the same way for the embedding graph and the length model."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def session_providers(allow_cuda: bool) -> list[str]:
    """CUDA first when onnxruntime has it and it is allowed, CPU always (as the fallback)."""
    import onnxruntime

    if allow_cuda and CUDA_PROVIDER in onnxruntime.get_available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def make_session(
    path: Path | bytes, *, intra_op_threads: int, allow_cuda: bool, disabled_optimizers: Sequence[str] = ()
):
    """An InferenceSession on path (or serialized model bytes) with bounded threads, errors-only logs.

    disabled_optimizers names ONNX Runtime graph rewrites to skip (e.g. "SkipLayerNormFusion").
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: shape-inference warnings are noise here
    # Worker threads sleep instead of spinning between runs: on a busy or shared CPU, spinning
    # threads steal the cores the next run needs (measured: 2 threads twice as slow as 1 under load).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = path if isinstance(path, bytes) else str(path)
    return onnxruntime.InferenceSession(
        source,
        sess_options=options,
        providers=session_providers(allow_cuda),
        disabled_optimizers=list(disabled_optimizers),
    )
