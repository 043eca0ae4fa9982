"""Custom CUDA paged attention for the engine: varlen attention over block tables and the KV cache write.

    csrc/launchers.h        plain C++ interface (argument structs, launchers): no torch, no CUDA
    csrc/*.cu, *.cuh        the kernels (no torch headers: a bare `nvcc -c` compiles them anywhere)
    csrc/binding.cpp        torch binding: checks tensors, launches on the current stream
    loader.py               builds the extension with nvcc at first use (cached) where torch has CUDA
    ops.py                  Python API: paged_attention (+ decode form), write_kv_to_cache, launch plans
    backend.py              picks the CUDA kernels or the torch reference for the model runner

Every query shape of a step (decodes, prefill chunks causal over their cached prefix, verify
queries) runs in one launch of our varlen kernel per layer, bf16/fp16 or int8 KV; the paged torch
reference (services/engine/attention.py) stays the CPU path and the correctness oracle. Nothing here loads the extension at import time: with a CPU-only torch the
package imports and the engine uses the reference. tests/kernel_sim runs the same kernel sources on
CPU (a SIMT emulator), so their logic is tested without a GPU. Their benchmark, `alise bench attention`
(bandwidth sweep and end-to-end tokens/s, GPU only), is services/bench/attention*.py.
"""
