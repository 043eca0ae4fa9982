"""Custom CUDA paged attention for the engine: decode over block tables and the KV cache write.

    csrc/            CUDA C++ kernels (no torch headers: `nvcc -c` compiles them anywhere) and
                     the torch binding (binding.cpp), joined by the plain interface launchers.h
    loader.py        builds the extension with nvcc at first use (cached on disk) where torch has CUDA
    ops.py           the Python API: paged_decode_attention, write_kv_to_cache, the split-KV plan
    backend.py       picks the CUDA kernels or the torch reference for the engine
    bench_*.py       `alise bench attention`: bandwidth sweep and end-to-end tokens/s (GPU only)

Decode (one query token per sequence) runs in our kernel; prefill chunks use torch's SDPA per
request through the paged reference (services/engine/attention.py), which stays the CPU path and
the correctness oracle. Nothing here imports the extension at import time: on a CPU-only torch the
package imports fine and the engine uses the reference.
"""
