"""Chooses the engine's attention implementation and runs it for the model runner.

    torch-reference  the step's decodes batched over their gathered paged KV (in groups sorted by
                     context length), prefill chunks one SDPA per request (attention.py); the CPU
                     path, used wherever the CUDA kernels cannot run (paged_attention_reference
                     stays the per-request oracle)
    cuda             our decode kernel for the step's single-token requests, SDPA per request
                     (attention.attend_request) for prefill chunks; our cache-write kernel

The choice is made once per model runner: CUDA device, fp16/bf16 KV, a supported head dim and
block size, and an extension that builds and loads. Otherwise the reference, with the reason.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import Callable

import torch

from services.engine.attention import (
    AttentionMetadata, DecodeBatch, attend_mixed, decode_attention_reference, decode_batch_of,
)
from services.engine.kernels import ops
from services.engine.kernels.loader import KernelUnavailable, load_kernels
from services.engine.kv_cache import PagedKvCache

log = logging.getLogger(__name__)


class AttentionBackendKind(enum.Enum):
    TORCH_REFERENCE = "torch-reference"  # torch over the gathered paged KV (decodes batched)
    CUDA = "cuda"  # our paged decode kernel (+ SDPA for prefill chunks)


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs, and why (logged at engine start)."""

    kind: AttentionBackendKind  # the implementation
    reason: str  # why it was chosen, e.g. "device is cpu"


def choose_backend(
    device: torch.device, dtype: torch.dtype, head_dim: int, block_size: int,
    load: Callable[[], object] = load_kernels,
) -> BackendChoice:
    """The CUDA kernels where they support the shape and load; the torch reference otherwise."""
    reference = AttentionBackendKind.TORCH_REFERENCE
    if device.type != "cuda":
        return BackendChoice(reference, f"device is {device.type}")
    if dtype not in ops.SUPPORTED_DTYPES:
        return BackendChoice(reference, f"KV dtype {dtype} has no kernel (float16/bfloat16 only)")
    if head_dim not in ops.SUPPORTED_HEAD_DIMS:
        return BackendChoice(reference, f"head_dim {head_dim} has no kernel ({ops.SUPPORTED_HEAD_DIMS})")
    if block_size not in ops.SUPPORTED_BLOCK_SIZES:
        return BackendChoice(reference, f"block size {block_size} has no kernel ({ops.SUPPORTED_BLOCK_SIZES})")
    try:
        load()
    except KernelUnavailable as error:
        return BackendChoice(reference, str(error))
    return BackendChoice(AttentionBackendKind.CUDA, "CUDA kernels loaded")


class ReferenceAttention:
    """Torch everywhere: the cache's own index_put write, decodes batched, prefill chunks per request."""

    kind = AttentionBackendKind.TORCH_REFERENCE

    def prepare(self, metadata: AttentionMetadata) -> AttentionMetadata:
        return replace(metadata, decode_batch=decode_batch_of(metadata))

    def write(self, cache: PagedKvCache, layer: int, slot_mapping: torch.Tensor, key, value) -> None:
        cache.write(layer, slot_mapping, key, value)

    def attend(self, query: torch.Tensor, cache: PagedKvCache, layer: int, metadata, scale: float) -> torch.Tensor:
        return attend_mixed(
            query, cache.key_cache[layer], cache.value_cache[layer], metadata, scale, decode_attention_reference
        )


class CudaAttention:
    """Decode rows through the CUDA kernel, prefill rows through SDPA, writes through our kernel."""

    kind = AttentionBackendKind.CUDA

    def prepare(self, metadata: AttentionMetadata) -> AttentionMetadata:
        """Adds the decode rows' device tensors, once per step (every layer reuses them)."""
        return replace(metadata, decode_batch=decode_batch_of(metadata))

    def write(self, cache: PagedKvCache, layer: int, slot_mapping: torch.Tensor, key, value) -> None:
        ops.write_kv_to_cache(key, value, cache.key_cache[layer], cache.value_cache[layer], slot_mapping)

    def attend(self, query: torch.Tensor, cache: PagedKvCache, layer: int, metadata, scale: float) -> torch.Tensor:
        return attend_mixed(
            query, cache.key_cache[layer], cache.value_cache[layer], metadata, scale, _cuda_decode_attention
        )


def _cuda_decode_attention(query, key_cache, value_cache, batch: DecodeBatch, scale: float) -> torch.Tensor:
    return ops.paged_decode_attention(
        query, key_cache, value_cache, batch.block_tables, batch.context_lens,
        scale=scale, max_context_len=batch.max_context_len,
    )


def make_attention(
    device: torch.device, dtype: torch.dtype, head_dim: int, block_size: int
) -> ReferenceAttention | CudaAttention:
    """The backend for a model runner; logs which one and why."""
    choice = choose_backend(device, dtype, head_dim, block_size)
    log.info("attention backend: %s (%s)", choice.kind.value, choice.reason)
    return CudaAttention() if choice.kind is AttentionBackendKind.CUDA else ReferenceAttention()
