"""Builds and loads the CUDA extension at first use, cached on disk, only where torch has CUDA.

The build directory is named after a digest of every source file, the torch version and its CUDA
version, so an edited kernel or a new torch rebuilds and an unchanged one loads in about a second.
`python -m services.engine.kernels.loader` builds ahead of time (for an image or an install step).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sys
import threading
from types import ModuleType

import torch

from services.common.cli_errors import print_error

CSRC_DIR = pathlib.Path(__file__).resolve().parent / "csrc"
CUDA_SOURCES = ("paged_attention.cu", "paged_attention_hd64.cu", "paged_attention_hd128.cu", "cache_write.cu")
CPP_SOURCES = ("binding.cpp",)
HEADERS = ("launchers.h", "launch.cuh", "vec.cuh", "paged_attention.cuh", "paged_attention_launch.cuh")
# No --use_fast_math: the int8 write must divide and round exactly like the torch reference.
# No -std: torch's builder picks the standard its headers need (C++17 or C++20); the kernels build
# with either (the CI compile check uses C++17 for the kernels, C++20 for the binding).
NVCC_FLAGS = ("-O3", "-lineinfo")
CXX_FLAGS = ("-O3",)
CACHE_ENV = "ALISE_KERNEL_CACHE"  # overrides the cache root (default ~/.cache/alise/kernels)


class KernelUnavailable(RuntimeError):
    """The CUDA kernels cannot run here: CPU-only torch, no GPU, no nvcc, or the build failed."""


_lock = threading.Lock()
_module: ModuleType | None = None
_failure: str | None = None


def source_digest() -> str:
    """Digest of the sources and of the torch / CUDA versions they are built against."""
    digest = hashlib.sha256(f"{torch.__version__}|{torch.version.cuda}".encode())
    for name in sorted(CUDA_SOURCES + CPP_SOURCES + HEADERS):
        digest.update(name.encode())
        digest.update((CSRC_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def build_directory() -> pathlib.Path:
    """Where this version of the extension is built and cached."""
    root = pathlib.Path(os.environ.get(CACHE_ENV) or "~/.cache/alise/kernels").expanduser()
    return root / f"alise_kernels_{source_digest()}"


def cuda_unavailable_reason() -> str | None:
    """Why the kernels cannot be built here, or None when torch has CUDA and sees a GPU."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def load_kernels(verbose: bool = False) -> ModuleType:
    """The compiled extension (module with paged_attention and write_cache); builds it on first use.

    Raises KernelUnavailable, with the reason, where CUDA is missing or the build fails; a failure
    is remembered so that later calls fail fast instead of rebuilding.
    """
    global _module, _failure
    with _lock:
        if _module is not None:
            return _module
        if _failure is None:
            _failure = cuda_unavailable_reason()
        if _failure is not None:
            raise KernelUnavailable(_failure)
        try:
            _module = _build(verbose)
        except Exception as error:  # compiler, linker or import failure: fall back, say why
            _failure = f"building the CUDA kernels failed: {type(error).__name__}: {error}"
            raise KernelUnavailable(_failure) from error
        return _module


def _build(verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=directory.name,
        sources=[str(CSRC_DIR / name) for name in CPP_SOURCES + CUDA_SOURCES],
        extra_cflags=list(CXX_FLAGS),
        extra_cuda_cflags=list(NVCC_FLAGS),
        build_directory=str(directory),
        verbose=verbose,
    )


def main(argv: list[str] | None = None) -> int:
    """Builds the extension now (verbose); exit status 1 with the reason when it cannot.

    --build-only: compile without a visible GPU (an image build), for the architectures in
    TORCH_CUDA_ARCH_LIST; only a CUDA build of torch is needed.
    """
    build_only = "--build-only" in (sys.argv[1:] if argv is None else argv)
    try:
        if build_only and torch.version.cuda is not None:
            if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
                raise KernelUnavailable("--build-only needs TORCH_CUDA_ARCH_LIST (no GPU to detect it from)")
            _build(verbose=True)
        else:
            load_kernels(verbose=True)
    except KernelUnavailable as error:
        print_error("alise kernels", str(error))
        return 1
    except Exception as error:  # compiler or linker failure of --build-only
        print_error("alise kernels", f"building failed: {type(error).__name__}: {error}")
        return 1
    print(f"alise kernels built in {build_directory()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
