"""The paged KV cache tensors and the per-step index tensors that address them.

Layout, one tensor for keys and one for values:

    key_cache[layer, block, offset_in_block, kv_head, head_dim]

so that `key_cache[layer].view(-1, num_kv_heads, head_dim)[slot]` is one token position, with
slot = block_id * block_size + offset (see block_pool.py). The CUDA kernel issue reads the same
layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KvCacheShape:
    """Sizes of the paged cache."""

    num_layers: int  # transformer layers
    num_blocks: int  # physical blocks in the pool
    block_size: int  # token positions per block
    num_kv_heads: int  # key/value heads per layer
    head_dim: int  # elements per head

    def block_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of one block across all layers, keys and values."""
        element_bytes = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element_bytes


class PagedKvCache:
    """Allocated key and value pools for every layer."""

    def __init__(self, shape: KvCacheShape, dtype: torch.dtype, device: torch.device) -> None:
        size = (shape.num_layers, shape.num_blocks, shape.block_size, shape.num_kv_heads, shape.head_dim)
        self.shape = shape
        self.key_cache = torch.zeros(size, dtype=dtype, device=device)
        self.value_cache = torch.zeros(size, dtype=dtype, device=device)

    def write(self, layer: int, slot_mapping: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Stores keys/values [num_tokens, num_kv_heads, head_dim] at their slots."""
        flat_shape = (-1, self.shape.num_kv_heads, self.shape.head_dim)
        self.key_cache[layer].view(flat_shape)[slot_mapping] = keys
        self.value_cache[layer].view(flat_shape)[slot_mapping] = values


def kv_cache_num_blocks(memory_bytes: int, block_bytes: int) -> int:
    """Blocks that fit in memory_bytes; ValueError when not even one does."""
    num_blocks = memory_bytes // block_bytes
    if num_blocks < 1:
        raise ValueError(f"KV cache memory {memory_bytes} B holds no block of {block_bytes} B")
    return num_blocks
