"""Sizes and times of a victim's KV in each swap codec, for the simulated host tier.

One KV block holds `block_size_tokens` positions of every layer, keys and values:

    elements per block = 2 (K, V) x layers x kv heads x head dim x block_size_tokens
    FULL  bytes = elements x 2                       (bf16 / fp16, bit for bit)
    INT8  bytes = elements x 1 + 4 x (2 x layers x kv heads)
                  (one float32 scale per (layer, block, K/V, kv head); services/engine/kv_quant.py)
    INT4  bytes = elements / 2 + 8 x (elements / group size)
                  (a float32 scale and minimum per group of 32 head dims of one token and head)

A victim swaps whole blocks (the engine copies blocks, the last one partly filled), so its size is
blocks x block bytes. Moving it takes its bytes over the host link (PCIe, one direction), plus, for
a lossy codec, quantize (out) or dequantize (in) on the GPU, which reads and writes both the full and
the compressed block once: (full + compressed bytes) / GPU memory bandwidth. That is microseconds per
block on an H100, small next to the link, but charged rather than neglected.

Relative errors are the relative Frobenius error ||x - x'|| / ||x|| of a quantize/dequantize round
trip on real KV; the constants below are placeholders in the measured range until the memory
manager's measurements replace them (flags of `alise bench sim`).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.memory.eviction_policy import PRECISION_ORDER, CodecCost, KvCodec

INT8_RELATIVE_ERROR = 0.0075  # int8 per-block per-head scales on real KV: about 0.005-0.01
INT4_RELATIVE_ERROR = 0.09  # int4, groups of 32 head dims, on real KV: about 0.08-0.1
INT4_GROUP_SIZE = 32  # head dims per int4 (scale, minimum) pair
SCALE_BYTES = 4  # float32 scale (and minimum)
FULL_BYTES_PER_ELEMENT = 2.0  # bf16 / fp16 KV


@dataclass(frozen=True)
class KvLayout:
    """Shape of the engine's KV blocks (one block spans every layer, keys and values)."""

    num_layers: int  # transformer layers
    num_kv_heads: int  # key/value heads per layer
    head_dim: int  # elements per head
    block_size_tokens: int  # token positions per block
    int4_group_size: int = INT4_GROUP_SIZE  # head dims per int4 group
    # Bytes per element of the pool's own format, which FULL swaps bit for bit: 2 (bf16), or about 1
    # for an int8 pool (its scales included; gpu_presets.KvDtype.INT8).
    full_bytes_per_element: float = FULL_BYTES_PER_ELEMENT

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "block_size_tokens", "int4_group_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.head_dim % self.int4_group_size or self.head_dim % 2:
            raise ValueError(f"int4_group_size {self.int4_group_size} must divide the even head_dim {self.head_dim}")

    @property
    def num_elements_per_block(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.block_size_tokens

    def block_bytes(self, codec: KvCodec) -> int:
        """Bytes of one block stored in `codec` (see the module docstring)."""
        elements = self.num_elements_per_block
        if codec is KvCodec.FULL:
            return int(elements * self.full_bytes_per_element)
        if codec is KvCodec.INT8:
            return elements + SCALE_BYTES * 2 * self.num_layers * self.num_kv_heads
        num_groups = elements // self.int4_group_size
        return elements // 2 + 2 * SCALE_BYTES * num_groups

    def num_blocks(self, num_kv_tokens: int) -> int:
        return -(-num_kv_tokens // self.block_size_tokens)


@dataclass(frozen=True)
class CodecTimes:
    """The rates that turn bytes into seconds."""

    link_bytes_per_s: float  # host <-> device copy, one direction, effective
    gpu_bytes_per_s: float  # GPU memory bandwidth seen by the quantize / dequantize kernels

    def __post_init__(self) -> None:
        if not self.link_bytes_per_s > 0 or not self.gpu_bytes_per_s > 0:
            raise ValueError(f"rates must be > 0, got {self.link_bytes_per_s}, {self.gpu_bytes_per_s}")


def codec_costs(
    layout: KvLayout, times: CodecTimes, num_kv_tokens: int, codecs: tuple[KvCodec, ...]
) -> tuple[CodecCost, ...]:
    """What moving `num_kv_tokens` of KV out (and back) costs in each codec, most precise first.

    Swap-out and swap-in are symmetric: the same bytes over the link, and a quantize or a
    dequantize pass of the same size on the GPU."""
    num_blocks = layout.num_blocks(num_kv_tokens)
    full_bytes = num_blocks * layout.block_bytes(KvCodec.FULL)
    costs = []
    for codec in sorted(codecs, key=PRECISION_ORDER.index):
        size_bytes = num_blocks * layout.block_bytes(codec)
        convert_s = 0.0 if codec is KvCodec.FULL else (full_bytes + size_bytes) / times.gpu_bytes_per_s
        move_s = size_bytes / times.link_bytes_per_s + convert_s
        costs.append(CodecCost(codec, size_bytes, move_s, move_s))
    return tuple(costs)
