"""Measurements for `alise bench attention`: GPU timing, copy bandwidth, one decode shape.

Timing: CUDA events around the timed call only, after warm-up; before every timed call a 256 MiB
buffer is overwritten so that L2 holds none of the inputs (cold-cache figures, the serving case:
between two layers' attention the GPU streams a whole layer of weights). The figure is the median.

Bytes: the minimum a decode must move = keys + values of every context (+ their int8 scales),
the queries read and the outputs written. Block tables and context lengths are not counted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from services.engine.kernels import ops

L2_FLUSH_BYTES = 256 * 1024**2
COPY_BYTES = 2 * 1024**3  # buffer of the device-to-device copy that measures bandwidth
SCALE_BYTES = 4  # float32 int8 scale per (block, kv head), keys and values each


@dataclass(frozen=True)
class DecodeShape:
    """One point of the sweep."""

    batch: int  # sequences, one query token each
    context_len: int  # positions per sequence (all equal)
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (num_heads: MHA)
    head_dim: int  # elements per head
    block_size: int  # positions per KV block
    int8_kv: bool  # int8 KV with per-(block, head) scales, else bfloat16

    @property
    def num_blocks_per_seq(self) -> int:
        return -(-self.context_len // self.block_size)

    def minimum_bytes(self) -> int:
        """KV (+ scales) read, queries read, outputs written: what no decode kernel can avoid."""
        kv_element_bytes = 1 if self.int8_kv else 2
        kv = 2 * self.batch * self.context_len * self.num_kv_heads * self.head_dim * kv_element_bytes
        scales = 2 * self.batch * self.num_blocks_per_seq * self.num_kv_heads * SCALE_BYTES if self.int8_kv else 0
        query_and_output = 2 * self.batch * self.num_heads * self.head_dim * 2
        return kv + scales + query_and_output

    def dense_kv_bytes(self) -> int:
        """bf16 K and V as one dense [batch, kv_heads, context, head_dim] tensor each (SDPA)."""
        return 2 * self.batch * self.context_len * self.num_kv_heads * self.head_dim * 2


class Timer:
    """Median time of a GPU call, cold L2, CUDA events."""

    def __init__(self, device: torch.device, num_warmup: int, num_iters: int) -> None:
        self.num_warmup = num_warmup
        self.num_iters = num_iters
        self._flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)

    def median_s(self, call: Callable[[], object]) -> float:
        for _ in range(self.num_warmup):
            call()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(self.num_iters)
        ]
        for start, end in events:
            self._flush.zero_()
            start.record()
            call()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def copy_bandwidth_bytes_per_s(device: torch.device, timer: Timer) -> float:
    """Device-to-device copy: (read + write bytes) / median time of copying a 2 GiB buffer."""
    source = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = timer.median_s(lambda: target.copy_(source))
    source = target = None  # frees the copy buffers before the caller's next measurement
    return 2 * COPY_BYTES / seconds


@dataclass
class DecodeInputs:
    """The paged cache and index tensors of one shape, random contents."""

    query: torch.Tensor  # [batch, num_heads, head_dim] bf16
    key_cache: torch.Tensor  # [num_blocks, block_size, kv_heads, head_dim] bf16 or int8
    value_cache: torch.Tensor
    key_scales: torch.Tensor | None  # [num_blocks, kv_heads] float32 (int8 only)
    value_scales: torch.Tensor | None
    block_tables: torch.Tensor  # int32 [batch, num_blocks_per_seq], a random permutation of the pool
    context_lens: torch.Tensor  # int32 [batch]
    out: torch.Tensor  # [batch, num_heads, head_dim] bf16


def make_inputs(shape: DecodeShape, device: torch.device, seed: int) -> DecodeInputs:
    generator = torch.Generator(device=device).manual_seed(seed)
    num_blocks = shape.batch * shape.num_blocks_per_seq
    cache_shape = (num_blocks, shape.block_size, shape.num_kv_heads, shape.head_dim)

    def cache() -> torch.Tensor:
        if shape.int8_kv:
            return torch.randint(-127, 128, cache_shape, dtype=torch.int8, device=device, generator=generator)
        return torch.randn(cache_shape, dtype=torch.bfloat16, device=device, generator=generator)

    def scales() -> torch.Tensor | None:
        if not shape.int8_kv:
            return None
        return torch.rand((num_blocks, shape.num_kv_heads), device=device, generator=generator) / 40 + 1e-3

    permutation = torch.randperm(num_blocks, device=device, generator=generator).to(torch.int32)
    query = torch.randn((shape.batch, shape.num_heads, shape.head_dim), dtype=torch.bfloat16, device=device)
    return DecodeInputs(
        query=query,
        key_cache=cache(),
        value_cache=cache(),
        key_scales=scales(),
        value_scales=scales(),
        block_tables=permutation.view(shape.batch, shape.num_blocks_per_seq),
        context_lens=torch.full((shape.batch,), shape.context_len, dtype=torch.int32, device=device),
        out=torch.empty_like(query),
    )


def kernel_call(inputs: DecodeInputs, shape: DecodeShape) -> Callable[[], torch.Tensor]:
    scale = shape.head_dim**-0.5
    return lambda: ops.paged_decode_attention(
        inputs.query,
        inputs.key_cache,
        inputs.value_cache,
        inputs.block_tables,
        inputs.context_lens,
        scale=scale,
        max_context_len=shape.context_len,
        key_scales=inputs.key_scales,
        value_scales=inputs.value_scales,
        out=inputs.out,
    )


def gather_dense(
    inputs: DecodeInputs, shape: DecodeShape, num_seqs: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of the first num_seqs sequences (all by default) as [seqs, kv_heads, context, head_dim]
    bf16, gathered through the block tables (int8 blocks are dequantized after the gather)."""
    tables = inputs.block_tables[:num_seqs].long()
    dense = []
    for cache, scales in ((inputs.key_cache, inputs.key_scales), (inputs.value_cache, inputs.value_scales)):
        gathered = cache[tables]  # [seqs, blocks, block_size, kv_heads, d]
        if scales is not None:
            gathered = (gathered.float() * scales[tables][:, :, None, :, None]).to(torch.bfloat16)
        gathered = gathered.view(tables.shape[0], -1, shape.num_kv_heads, shape.head_dim)[:, : shape.context_len]
        dense.append(gathered.transpose(1, 2).contiguous())
    return dense[0], dense[1]


def relative_error_vs_sdpa(inputs: DecodeInputs, shape: DecodeShape, num_seqs: int = 4) -> float:
    """||kernel - SDPA|| / ||SDPA|| over the first sequences, SDPA in float32 on the same (dequantized) KV."""
    keys, values = gather_dense(inputs, shape, num_seqs)
    query = inputs.query[:num_seqs].float()
    expected = sdpa(query, keys.float(), values.float(), shape)
    actual = inputs.out[:num_seqs].float()
    return float((actual - expected).norm() / expected.norm())


def sdpa(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, shape: DecodeShape) -> torch.Tensor:
    """torch SDPA for one query token per sequence: [batch, heads, head_dim]."""
    attended = F.scaled_dot_product_attention(
        query[:, :, None, :],
        keys,
        values,
        scale=shape.head_dim**-0.5,
        enable_gqa=shape.num_heads != shape.num_kv_heads,
    )
    return attended[:, :, 0, :]
