"""What a draft costs next to a decode step, measured on the engine's own decoder (batch 1).

One request with `context_len` tokens already in a paged KV cache, then, timed in turn each
repeat (so machine noise hits all of them alike; medians reported):

    decode step   FusedLlama over all layers for 1 token + full LM head + argmax   (what drafting saves)
    draft at L    layers [0, L) for 1 token + the exit head (map, norm, draft-vocab rows, argmax)
    verify k      all layers for k + 1 tokens + LM head on k + 1 rows + argmax      (checks k drafts)

Ratios to the decode step are what the artifact stores (ExitHeadSet.draft_cost / verify_cost):
they transfer across CPUs far better than milliseconds. Layers run through FusedLlama._layer,
the loop body of FusedLlama.forward, so a draft costs exactly what the engine's layers cost.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.engine.attention import make_metadata
from services.engine.fused_llama import FusedLlama
from services.engine.kernels.backend import make_attention
from services.engine.kv_cache import KvCacheShape, PagedKvCache
from services.engine.spec.exit_heads import ExitHeadSet

BLOCK_SIZE = 16


@dataclass(frozen=True)
class DraftCosts:
    """Medians in milliseconds, and ratios to the decode step."""

    decode_step_ms: float
    draft_ms: dict[int, float]  # per exit layer L, one draft token
    verify_ms: dict[int, float]  # per k: a (k + 1)-token verify query

    def draft_cost_ratio(self) -> dict[int, float]:
        return {layer: ms / self.decode_step_ms for layer, ms in self.draft_ms.items()}

    def verify_cost_ratio(self) -> dict[int, float]:
        return {k: ms / self.decode_step_ms for k, ms in self.verify_ms.items()}


class _OneRequest:
    """A FusedLlama, its cache and attention backend, holding one request's prefilled context."""

    def __init__(self, model: torch.nn.Module, context_len: int, max_extra_tokens: int) -> None:
        config = model.config
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        parameter = next(model.parameters())
        self.device, self.scale = parameter.device, head_dim**-0.5
        num_blocks = -(-(context_len + max_extra_tokens) // BLOCK_SIZE)
        shape = KvCacheShape(config.num_hidden_layers, num_blocks, BLOCK_SIZE, kv_heads, head_dim)
        self.cache = PagedKvCache(shape, parameter.dtype, self.device)
        self.attention = make_attention(self.device, parameter.dtype, head_dim, BLOCK_SIZE, heads, kv_heads)
        self.decoder = FusedLlama(model, heads, kv_heads, head_dim)
        self.blocks = list(range(num_blocks))
        self.lm_weight = model.lm_head.weight.detach()
        self.context_len = context_len
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, config.vocab_size, (context_len,), generator=generator)
        self.run(prompt.to(self.device), 0, len(self.decoder.layers))

    def run(self, token_ids: torch.Tensor, start: int, num_layers: int) -> torch.Tensor:
        """The residual stream after num_layers layers for tokens at positions [start, start + n)."""
        positions = torch.arange(start, start + token_ids.numel(), device=self.device)
        metadata = make_metadata(positions, [0, token_ids.numel()], [start + token_ids.numel()], [self.blocks])
        metadata = self.attention.prepare(metadata)
        decoder = self.decoder
        decoder.rope.ensure(metadata.max_seq_len)
        rope_rows = decoder.rope.rows(positions)
        hidden = decoder.embed_tokens(token_ids)
        for index, layer in enumerate(decoder.layers[:num_layers]):
            hidden = decoder._layer(index, layer, hidden, rope_rows, metadata, self.attention, self.cache, self.scale)
        return hidden

    def full_step(self, num_tokens: int) -> torch.Tensor:
        hidden = self.run(
            torch.ones(num_tokens, dtype=torch.long, device=self.device), self.context_len, len(self.decoder.layers)
        )
        normed = F.rms_norm(hidden, self.decoder.final_norm.shape, self.decoder.final_norm, self.decoder.eps)
        return F.linear(normed, self.lm_weight).argmax(dim=-1)


def _timed_ms(action) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1e3


@torch.inference_mode()
def measure_draft_costs(
    model: torch.nn.Module,
    heads: ExitHeadSet,
    *,
    verify_draft_counts: tuple[int, ...] = (1, 2, 3, 4, 6, 8),
    context_len: int = 256,
    num_repeats: int = 15,
    num_warmup: int = 3,
) -> DraftCosts:
    """Medians over num_repeats of each timing (see the module docstring); fuses the model's weights."""
    request = _OneRequest(model, context_len, max(verify_draft_counts) + 1)
    token = torch.ones(1, dtype=torch.long, device=request.device)
    actions = {("decode", 0): lambda: request.full_step(1)}
    for layer in heads.layers:
        head = heads.head(layer)
        actions[("draft", layer)] = lambda L=layer, h=head: h.draft_token_ids(request.run(token, context_len, L))
    for k in verify_draft_counts:
        actions[("verify", k)] = lambda n=k + 1: request.full_step(n)
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in actions}
    for repeat in range(num_warmup + num_repeats):
        for key, action in actions.items():
            elapsed_ms = _timed_ms(action)
            if repeat >= num_warmup:
                samples[key].append(elapsed_ms)
    median = {key: statistics.median(values) for key, values in samples.items()}
    return DraftCosts(
        decode_step_ms=median[("decode", 0)],
        draft_ms={layer: median[("draft", layer)] for layer in heads.layers},
        verify_ms={k: median[("verify", k)] for k in verify_draft_counts},
    )
