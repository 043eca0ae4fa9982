"""CUDA graphs of the decoder for decode-only steps, at a few padded batch sizes.

A decode step feeds one token per request, so its shapes depend only on the number of requests.
The decoder is captured once per size in CAPTURE_SIZES (up to max_num_seqs) over static input
buffers; a step of n decodes copies its inputs into the first n rows of the buffers, pads the rest
and replays the smallest graph with >= n rows (the XY-Serve idea of a few fixed shapes that the
hardware runs well, here applied to launch overhead: ~12 launches per layer become one replay).

Padding rows: token 0 at position 0, slot -1 (the cache write skips negative slots, see
AttentionMetadata), context length 1 over block 0 (a valid block; its output rows are dropped).
Attention is captured with max_seq_len = max_model_len, so the kernels' launch plan covers every
context a replay may see (graphs need the CUDA attention backend: the torch reference is eager only). Mixed steps (any prefill chunk), larger batches and CPU run eagerly;
`--enforce-eager` turns graphs off.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from services.engine.attention import AttentionMetadata
from services.engine.input_batch import StepArrays
from services.engine.kernels.backend import AttentionBackendKind

if TYPE_CHECKING:
    from services.engine.model_runner import ModelRunner

log = logging.getLogger(__name__)

CAPTURE_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
PAD_SLOT = -1


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Padded batch sizes to capture: CAPTURE_SIZES up to max_num_seqs, and max_num_seqs itself."""
    sizes = [size for size in CAPTURE_SIZES if size < max_num_seqs]
    return sizes + [max_num_seqs]


class DecodeGraphs:
    """Static buffers and one captured graph per padded size; replays decode-only steps."""

    @classmethod
    def create(cls, runner: "ModelRunner", max_num_seqs: int, max_model_len: int, enforce_eager: bool):
        """Captured graphs on CUDA with our kernels; None (eager only) on CPU, with enforce_eager, or
        when attention runs through the torch reference (it reads host lists per step and would
        write the padding rows' slot -1, so it cannot be captured)."""
        if enforce_eager or runner.device.type != "cuda":
            return None
        if runner.attention.kind is not AttentionBackendKind.CUDA:
            log.info("CUDA graphs off: attention backend is %s", runner.attention.kind.value)
            return None
        graphs = cls(runner, max_num_seqs, max_model_len)
        graphs.capture()
        return graphs

    def __init__(self, runner: "ModelRunner", max_num_seqs: int, max_model_len: int) -> None:
        self.runner = runner
        self.sizes = capture_sizes(max_num_seqs)
        self.max_model_len = max_model_len
        size, device = self.sizes[-1], runner.device
        width = -(-max_model_len // runner.kv.block_size)
        self.input_ids = torch.zeros(size, dtype=torch.int32, device=device)
        self.positions = torch.zeros(size, dtype=torch.int32, device=device)
        self.slot_mapping = torch.full((size,), PAD_SLOT, dtype=torch.long, device=device)
        self.query_start_loc = torch.arange(size + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(size, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(size, width, dtype=torch.int32, device=device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._outputs: dict[int, torch.Tensor] = {}
        # Each graph's metadata (and the launch plan's device tensors in it) must outlive the graph:
        # a replay reads their memory at the addresses captured.
        self._metadata: dict[int, AttentionMetadata] = {}
        self.num_replays = 0

    def _metadata_for(self, size: int) -> AttentionMetadata:
        metadata = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size],
            query_start_loc_host=list(range(size + 1)),
            seq_lens_host=[self.max_model_len] * size,
            max_query_len=1,
            max_seq_len=self.max_model_len,
        )
        return self.runner.attention.prepare(metadata)

    @torch.inference_mode()
    def capture(self) -> None:
        """Captures every size, largest first, in one memory pool (smaller graphs reuse its blocks)."""
        self.runner.decoder.rope.ensure(self.max_model_len)
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.sizes):
            metadata = self._metadata[size] = self._metadata_for(size)
            inputs = (self.input_ids[:size], self.positions[:size], metadata)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: lazy initialisations must not happen during capture
                    self.runner.forward(*inputs)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._outputs[size] = self.runner.forward(*inputs)
            self._graphs[size] = graph
        torch.cuda.synchronize()
        log.info("captured CUDA graphs for decode batch sizes %s", self.sizes)

    def size_for(self, arrays: StepArrays) -> int | None:
        """The padded size that replays this step, or None when it must run eagerly."""
        num_reqs = len(arrays.seq_lens_host)
        if arrays.max_query_len != 1 or num_reqs > self.sizes[-1] or arrays.max_seq_len > self.max_model_len:
            return None
        return next(size for size in self.sizes if size >= num_reqs)

    def run(self, arrays: StepArrays) -> torch.Tensor | None:
        """Hidden states [num_reqs, hidden] from a replay, or None (the caller runs eagerly)."""
        size = self.size_for(arrays)
        if size is None:
            return None
        num_reqs, width = len(arrays.seq_lens_host), arrays.block_tables.shape[1]
        self.input_ids[:num_reqs].copy_(arrays.input_ids, non_blocking=True)
        self.positions[:num_reqs].copy_(arrays.positions, non_blocking=True)
        self.slot_mapping[:num_reqs].copy_(arrays.slot_mapping, non_blocking=True)
        self.seq_lens[:num_reqs].copy_(arrays.seq_lens, non_blocking=True)
        self.block_tables[:num_reqs, :width].copy_(arrays.block_tables, non_blocking=True)
        if num_reqs < size:  # padding rows: never written to the cache, outputs dropped
            self.input_ids[num_reqs:size].zero_()
            self.positions[num_reqs:size].zero_()
            self.slot_mapping[num_reqs:size].fill_(PAD_SLOT)
            self.seq_lens[num_reqs:size].fill_(1)
            self.block_tables[num_reqs:size, 0].zero_()
        self._graphs[size].replay()
        self.num_replays += 1
        return self._outputs[size][:num_reqs]
