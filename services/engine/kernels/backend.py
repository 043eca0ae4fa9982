"""Chooses the engine's attention implementation and runs it for the model runner.

    torch-reference  paged_attention_reference for every request (SDPA per request); the CPU
                     path and the correctness oracle, used wherever the CUDA kernels cannot run
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

from services.engine.attention import AttentionMetadata, DecodeBatch, attend_request, paged_attention_reference
from services.engine.kernels import ops
from services.engine.kernels.loader import KernelUnavailable, load_kernels
from services.engine.kv_cache import PagedKvCache

log = logging.getLogger(__name__)


class AttentionBackendKind(enum.Enum):
    TORCH_REFERENCE = "torch-reference"  # torch SDPA per request over the gathered paged KV
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
    """Torch everywhere: the cache's own index_put write and SDPA per request."""

    kind = AttentionBackendKind.TORCH_REFERENCE

    def prepare(self, metadata: AttentionMetadata, block_tables: torch.Tensor) -> AttentionMetadata:
        return metadata

    def write(self, cache: PagedKvCache, layer: int, slot_mapping: torch.Tensor, key, value) -> None:
        cache.write(layer, slot_mapping, key, value)

    def attend(self, query: torch.Tensor, cache: PagedKvCache, layer: int, metadata, scale: float) -> torch.Tensor:
        return paged_attention_reference(query, cache.key_cache[layer], cache.value_cache[layer], metadata, scale)


class CudaAttention:
    """Decode rows through the CUDA kernel, prefill rows through SDPA, writes through our kernel."""

    kind = AttentionBackendKind.CUDA

    def prepare(self, metadata: AttentionMetadata, block_tables: torch.Tensor) -> AttentionMetadata:
        """Adds the decode rows' device tensors, once per step (every layer reuses them).

        block_tables: int64 [num_requests, max_blocks] on the device, row r padded past its blocks.
        """
        starts = metadata.query_start_locs
        decodes = [r for r in range(len(metadata.context_lens)) if starts[r + 1] - starts[r] == 1]
        if not decodes:
            return metadata
        device = block_tables.device
        context_lens = [metadata.context_lens[r] for r in decodes]
        all_decode = len(decodes) == len(metadata.context_lens)
        tables = block_tables if all_decode else block_tables[torch.tensor(decodes, device=device)]
        batch = DecodeBatch(
            request_indices=decodes,
            token_rows=None if all_decode else torch.tensor([starts[r] for r in decodes], device=device),
            block_tables=tables.to(torch.int32),
            context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
            max_context_len=max(context_lens),
        )
        return replace(metadata, decode_batch=batch)

    def write(self, cache: PagedKvCache, layer: int, slot_mapping: torch.Tensor, key, value) -> None:
        ops.write_kv_to_cache(key, value, cache.key_cache[layer], cache.value_cache[layer], slot_mapping)

    def attend(self, query: torch.Tensor, cache: PagedKvCache, layer: int, metadata, scale: float) -> torch.Tensor:
        key_cache, value_cache = cache.key_cache[layer], cache.value_cache[layer]
        batch = metadata.decode_batch
        output = torch.empty_like(query)
        decodes = set(batch.request_indices) if batch is not None else set()
        if batch is not None:
            rows = query if batch.token_rows is None else query.index_select(0, batch.token_rows)
            attended = ops.paged_decode_attention(
                rows, key_cache, value_cache, batch.block_tables, batch.context_lens,
                scale=scale, max_context_len=batch.max_context_len,
                out=output if batch.token_rows is None else None,
            )
            if batch.token_rows is not None:
                output.index_copy_(0, batch.token_rows, attended)
        starts = metadata.query_start_locs
        for r, context_len in enumerate(metadata.context_lens):
            if r not in decodes:  # prefill chunk: torch SDPA over the gathered paged KV
                output[starts[r] : starts[r + 1]] = attend_request(
                    query[starts[r] : starts[r + 1]], key_cache, value_cache, metadata.block_tables[r],
                    context_len, scale,
                )
        return output


def make_attention(
    device: torch.device, dtype: torch.dtype, head_dim: int, block_size: int
) -> ReferenceAttention | CudaAttention:
    """The backend for a model runner; logs which one and why."""
    choice = choose_backend(device, dtype, head_dim, block_size)
    log.info("attention backend: %s (%s)", choice.kind.value, choice.reason)
    return CudaAttention() if choice.kind is AttentionBackendKind.CUDA else ReferenceAttention()
