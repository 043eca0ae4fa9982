"""Early-exit self-drafting (LayerSkip-style): the served model's first L layers draft, the whole model verifies.

For each verify chunk of a step whose drafts the runner makes (request.draft_token_ids is None), k
passes run before the step's forward, all such requests batched in each pass as 1-token queries:

    pass j (0..k-1):  input = the token at position n0 - 1 + j    (n0 = tokens the request has;
                      j = 0: its last sampled token, not yet in the KV; j > 0: draft j-1)
                      -> first L layers over the paged cache (writes those layers' KV at that position)
                      -> exit head -> draft j
    verify:           the step's forward feeds positions n0 - 1 .. n0 - 1 + k through every layer and
                      rewrites all KV there, so the early layers' draft-time KV never outlives the step.

The scheduler allocated KV slots through position n0 - 1 + k for the verify, which covers every
pass. No second set of weights: the head maps layer L's residual stream to the last layer's space
and reuses the final norm and LM head (exit_heads.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from services.engine.scheduler.output import ScheduledChunk, SchedulerOutput

if TYPE_CHECKING:
    from services.engine.model_runner import ModelRunner


class DraftHead(Protocol):
    """An exit head (exit_heads.ExitHead): layer L's residual stream -> draft token ids."""

    num_layers: int

    def draft_token_ids(self, hidden: torch.Tensor) -> torch.Tensor: ...


class EarlyExitDrafter:
    """Drafts with the runner's own decoder, cut after head.num_layers layers."""

    def __init__(self, head: DraftHead) -> None:
        self.head = head

    def draft(self, runner: ModelRunner, step: SchedulerOutput) -> None:
        """Sets draft_token_ids of the step's verify chunks that have none (n-gram drafts are kept)."""
        chunks = [chunk for chunk in step.chunks if chunk.num_draft_tokens and chunk.request.draft_token_ids is None]
        if not chunks:
            return
        drafts: list[list[int]] = [[] for _ in chunks]
        for depth in range(max(chunk.num_draft_tokens for chunk in chunks)):
            active = [index for index, chunk in enumerate(chunks) if chunk.num_draft_tokens > depth]
            tokens = self._draft_pass(runner, [chunks[index] for index in active], depth)
            for index, token in zip(active, tokens, strict=True):
                drafts[index].append(token)
        for chunk, proposed in zip(chunks, drafts, strict=True):
            chunk.request.draft_token_ids = proposed

    def _draft_pass(self, runner: ModelRunner, chunks: list[ScheduledChunk], depth: int) -> list[int]:
        """One batched 1-token pass at position n0 - 1 + depth of each chunk's request; its drafts so far
        sit in the row after the request's tokens (InputBatch.write_drafts), so the pass reads them."""
        passes = []
        for chunk in chunks:
            num_tokens = chunk.num_context_tokens - chunk.num_draft_tokens  # n0
            passes.append(ScheduledChunk(chunk.request, 1, True, num_tokens + depth))
        arrays = runner.batch.prepare(passes, runner.kv.block_table)
        hidden = runner.decoder.forward_layers(
            arrays.input_ids,
            arrays.positions,
            runner.metadata_of(arrays),
            runner.attention,
            runner.cache,
            runner.scale,
            self.head.num_layers,
        )
        tokens = self.head.draft_token_ids(hidden).tolist()
        for row, token in zip(arrays.rows.tolist(), tokens, strict=True):
            runner.batch.write_drafts_at(row, depth, token)
        return tokens
