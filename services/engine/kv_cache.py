"""The paged KV cache tensors and the per-step index tensors that address them.

Layout, one tensor for keys and one for values:

    key_cache[layer, block, offset_in_block, kv_head, head_dim]

so that `key_cache[layer].view(-1, num_kv_heads, head_dim)[slot]` is one token position, with
slot = block_id * block_size + offset (see block_pool.py). The CUDA kernels read the same layout.

The pool's element type is chosen by `--kv-cache-dtype` (KvCacheDtype): the model's dtype (auto),
bfloat16, float16, or int8. An int8 pool also holds float32 scales, one per (layer, block, kv head)
for keys and for values (kv_quant.py): keys and values are quantized on write, and readers either
fold the scales into the attention (the CUDA kernel) or dequantize what they gather (the torch
reference, `layer_views`). An int8 block takes about half the bytes of a bf16 one, so the same
memory holds about twice the tokens; `KvCacheShape.block_bytes` counts the scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.engine import kv_quant
from services.engine.kv_dtype import KvCacheDtype

SCALE_DTYPE = torch.float32  # scales of an int8 pool

_TORCH_DTYPES = {KvCacheDtype.BF16: torch.bfloat16, KvCacheDtype.FP16: torch.float16, KvCacheDtype.INT8: torch.int8}


def kv_torch_dtype(kv_cache_dtype: KvCacheDtype | str, model_dtype: torch.dtype) -> torch.dtype:
    """The pool's torch dtype: the model's for auto; ValueError for an unknown name."""
    member = KvCacheDtype(kv_cache_dtype)
    return model_dtype if member is KvCacheDtype.AUTO else _TORCH_DTYPES[member]


@dataclass(frozen=True)
class KvCacheShape:
    """Sizes of the paged cache."""

    num_layers: int  # transformer layers
    num_blocks: int  # physical blocks in the pool
    block_size: int  # token positions per block
    num_kv_heads: int  # key/value heads per layer
    head_dim: int  # elements per head

    def block_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of one block across all layers, keys and values (and their scales when int8)."""
        element_bytes = torch.empty((), dtype=dtype).element_size()
        data = 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element_bytes
        if dtype != torch.int8:
            return data
        return data + 2 * self.num_layers * self.num_kv_heads * torch.empty((), dtype=SCALE_DTYPE).element_size()


class DequantizedView:
    """What the torch reference indexes instead of a cache tensor: `view[block_ids]` gathers blocks
    and returns them as `dtype` (dequantized with their scales when int8). `.shape` is the pool's."""

    def __init__(self, data: torch.Tensor, scales: torch.Tensor | None, dtype: torch.dtype) -> None:
        self.data, self.scales, self.dtype = data, scales, dtype
        self.shape = data.shape

    def __getitem__(self, index) -> torch.Tensor:
        if self.scales is None:
            return self.data[index].to(self.dtype)
        gathered = kv_quant.Int8Blocks(self.data[index], self.scales[index])
        return kv_quant.dequantize_int8_blocks(gathered, self.dtype)


class PagedKvCache:
    """Allocated key and value pools for every layer (and their scales for an int8 pool)."""

    def __init__(self, shape: KvCacheShape, dtype: torch.dtype, device: torch.device) -> None:
        size = (shape.num_layers, shape.num_blocks, shape.block_size, shape.num_kv_heads, shape.head_dim)
        self.shape = shape
        self.key_cache = torch.zeros(size, dtype=dtype, device=device)
        self.value_cache = torch.zeros(size, dtype=dtype, device=device)
        self.key_scales: torch.Tensor | None = None  # [num_layers, num_blocks, num_kv_heads] when int8
        self.value_scales: torch.Tensor | None = None
        if dtype == torch.int8:
            scale_size = (shape.num_layers, shape.num_blocks, shape.num_kv_heads)
            self.key_scales = torch.zeros(scale_size, dtype=SCALE_DTYPE, device=device)
            self.value_scales = torch.zeros(scale_size, dtype=SCALE_DTYPE, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.key_cache.dtype

    @property
    def quantized(self) -> bool:
        """True for an int8 pool (scales beside the data)."""
        return self.key_scales is not None

    def write(self, layer: int, slot_mapping: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Stores keys/values [num_tokens, num_kv_heads, head_dim] at their slots (quantized when int8)."""
        if self.quantized:
            kv_quant.write_int8(self.key_cache[layer], self.key_scales[layer], slot_mapping, keys)
            kv_quant.write_int8(self.value_cache[layer], self.value_scales[layer], slot_mapping, values)
            return
        flat_shape = (-1, self.shape.num_kv_heads, self.shape.head_dim)
        self.key_cache[layer].view(flat_shape)[slot_mapping] = keys.to(self.dtype)
        self.value_cache[layer].view(flat_shape)[slot_mapping] = values.to(self.dtype)

    def layer_views(self, layer: int, dtype: torch.dtype) -> tuple[torch.Tensor | DequantizedView, ...]:
        """The layer's key and value pools as the torch reference reads them, in `dtype`: the tensors
        themselves when they already are, else views that convert (dequantize) what is gathered."""
        if not self.quantized and self.dtype == dtype:
            return self.key_cache[layer], self.value_cache[layer]
        key_scales = None if self.key_scales is None else self.key_scales[layer]
        value_scales = None if self.value_scales is None else self.value_scales[layer]
        return (
            DequantizedView(self.key_cache[layer], key_scales, dtype),
            DequantizedView(self.value_cache[layer], value_scales, dtype),
        )


def kv_cache_num_blocks(memory_bytes: int, block_bytes: int) -> int:
    """Blocks that fit in memory_bytes; ValueError when not even one does."""
    num_blocks = memory_bytes // block_bytes
    if num_blocks < 1:
        raise ValueError(f"KV cache memory {memory_bytes} B holds no block of {block_bytes} B")
    return num_blocks
