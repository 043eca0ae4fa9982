"""Chooses the engine's attention implementation and runs it for the model runner.

    torch-reference  the step's decodes batched over their gathered paged KV (in groups sorted by
                     context length), verify queries and short chunks likewise, longer prefill chunks one SDPA per request
                     (attention.py); an int8 pool is dequantized as it is gathered. The CPU path,
                     used wherever the CUDA kernels cannot run (paged_attention_reference stays
                     the per-request oracle)
    cuda             our varlen paged-attention kernel: every request of the step (decodes,
                     prefill chunks, verify queries) in one launch per layer, GQA heads sharing
                     their KV loads, bf16/fp16 or int8 KV; our cache-write kernel (quantize on write)

The choice is made once per model runner: CUDA device, fp16/bf16 model, a KV pool of the model's
dtype or int8, a supported head dim and block size, and an extension that builds and loads.
Otherwise the reference, with the reason.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from typing import Callable

import torch

from services.engine.attention import AttentionMetadata, attend_mixed, decode_attention_reference, decode_batch_of
from services.engine.kernels import ops
from services.engine.kernels.loader import KernelUnavailable, load_kernels
from services.engine.kv_cache import PagedKvCache
from services.engine.short_query_attention import short_query_batch_of

log = logging.getLogger(__name__)


class AttentionBackendKind(enum.Enum):
    TORCH_REFERENCE = "torch-reference"  # torch over the gathered paged KV (decodes batched)
    CUDA = "cuda"  # our varlen paged-attention kernel for every query shape


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs, and why (logged at engine start)."""

    kind: AttentionBackendKind  # the implementation
    reason: str  # why it was chosen, e.g. "device is cpu"


def choose_backend(
    device: torch.device,
    dtype: torch.dtype,
    head_dim: int,
    block_size: int,
    load: Callable[[], object] = load_kernels,
    kv_dtype: torch.dtype | None = None,
) -> BackendChoice:
    """The CUDA kernels where they support the shape and load; the torch reference otherwise.

    dtype is the model's (queries, outputs); kv_dtype the pool's (default: the model's)."""
    reference = AttentionBackendKind.TORCH_REFERENCE
    kv_dtype = dtype if kv_dtype is None else kv_dtype
    if device.type != "cuda":
        return BackendChoice(reference, f"device is {device.type}")
    if dtype not in ops.SUPPORTED_DTYPES:
        return BackendChoice(reference, f"dtype {dtype} has no kernel (float16/bfloat16 only)")
    if kv_dtype not in (dtype, torch.int8):
        return BackendChoice(reference, f"KV dtype {kv_dtype} has no kernel for a {dtype} model (same dtype or int8)")
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
    """Torch everywhere: the cache's own write, decodes and short queries (verifies) batched, longer prefill
    chunks per request."""

    kind = AttentionBackendKind.TORCH_REFERENCE

    def prepare(self, metadata: AttentionMetadata) -> AttentionMetadata:
        return replace(metadata, decode_batch=decode_batch_of(metadata), short_queries=short_query_batch_of(metadata))

    def write(self, cache: PagedKvCache, layer: int, slot_mapping: torch.Tensor, key, value) -> None:
        cache.write(layer, slot_mapping, key, value)

    def attend(self, query: torch.Tensor, cache: PagedKvCache, layer: int, metadata, scale: float) -> torch.Tensor:
        keys, values = cache.layer_views(layer, query.dtype)
        return attend_mixed(query, keys, values, metadata, scale, decode_attention_reference)


class CudaAttention:
    """Every query row of the step through one varlen kernel launch per layer; writes through our kernel."""

    kind = AttentionBackendKind.CUDA

    def __init__(self, num_heads: int, num_kv_heads: int) -> None:
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads

    def prepare(self, metadata: AttentionMetadata) -> AttentionMetadata:
        """The launch plan (row tile, work items, split), once per step: every layer reuses it."""
        plan = ops.plan_attention(
            metadata.query_start_loc_host,
            metadata.max_query_len,
            metadata.max_seq_len,
            self.num_heads,
            self.num_kv_heads,
            metadata.block_tables.device,
        )
        reference_parts = metadata.decode_batch is not None or metadata.short_queries is not None
        if type(metadata) is not AttentionMetadata or reference_parts:
            return replace(metadata, kernel_plan=plan)
        # The runner's plain metadata: built field by field, a third of dataclasses.replace's cost per step.
        return AttentionMetadata(
            metadata.slot_mapping,
            metadata.query_start_loc,
            metadata.seq_lens,
            metadata.block_tables,
            metadata.query_start_loc_host,
            metadata.seq_lens_host,
            metadata.max_query_len,
            metadata.max_seq_len,
            kernel_plan=plan,
        )

    def write(self, cache: PagedKvCache, layer: int, slot_mapping: torch.Tensor, key, value) -> None:
        ops.write_kv_to_cache(
            key,
            value,
            cache.key_cache[layer],
            cache.value_cache[layer],
            slot_mapping,
            key_scales=None if cache.key_scales is None else cache.key_scales[layer],
            value_scales=None if cache.value_scales is None else cache.value_scales[layer],
        )

    def attend(self, query: torch.Tensor, cache: PagedKvCache, layer: int, metadata, scale: float) -> torch.Tensor:
        plan = metadata.kernel_plan
        return ops.paged_attention(
            query,
            cache.key_cache[layer],
            cache.value_cache[layer],
            metadata.block_tables,
            metadata.seq_lens,
            None if plan.work_items is None else metadata.query_start_loc,
            plan,
            scale=scale,
            key_scales=None if cache.key_scales is None else cache.key_scales[layer],
            value_scales=None if cache.value_scales is None else cache.value_scales[layer],
        )


def make_attention(
    device: torch.device,
    dtype: torch.dtype,
    head_dim: int,
    block_size: int,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    kv_dtype: torch.dtype | None = None,
) -> ReferenceAttention | CudaAttention:
    """The backend for a model runner; logs which one and why. The CUDA backend needs the head
    counts (its launch plan); without them the reference runs."""
    choice = choose_backend(device, dtype, head_dim, block_size, kv_dtype=kv_dtype)
    if choice.kind is AttentionBackendKind.CUDA and (num_heads is None or num_kv_heads is None):
        choice = BackendChoice(AttentionBackendKind.TORCH_REFERENCE, "head counts not given")
    log.info("attention backend: %s (%s)", choice.kind.value, choice.reason)
    if choice.kind is AttentionBackendKind.CUDA:
        return CudaAttention(num_heads, num_kv_heads)
    return ReferenceAttention()
