"""Runs one scheduled step of a Llama-family model over the paged KV cache.

The step's tokens from all requests are flattened into one sequence (no padding):

    request:    A A A A | B | C C          (A: prompt chunk, B: decode, C: prompt tail)
    positions:  0 1 2 3 | 9 | 4 5
    slots:      from each request's block table (block_pool.py)

The Hugging Face module weights are used as they are (embeddings, projections, norms, MLP, LM
head); attention and the KV cache are ours, so batching and paging stay under the scheduler's
control. Logits are computed only at the last position of requests that sample this step.
"""

from __future__ import annotations

import torch

from services.engine.attention import AttentionMetadata, make_metadata
from services.engine.block_pool import KvBlockManager
from services.engine.kernels.backend import make_attention
from services.engine.kv_cache import KvCacheShape, PagedKvCache
from services.engine.min_tokens import apply_min_tokens, model_stop_token_ids, stop_token_tensor
from services.engine.sampler import make_generator, sample_next_tokens
from services.engine.scheduler.output import SchedulerOutput


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [tokens, heads, head_dim]; cos, sin [tokens, head_dim]."""
    return x * cos[:, None, :] + _rotate_half(x) * sin[:, None, :]


class ModelRunner:
    """Owns the model and the KV cache tensors; called only from the engine thread."""

    def __init__(self, model: torch.nn.Module, kv: KvBlockManager, num_blocks: int) -> None:
        config = model.config
        self.model = model
        self.kv = kv
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.cache_shape = KvCacheShape(
            config.num_hidden_layers, num_blocks, kv.block_size, self.num_kv_heads, self.head_dim
        )
        self.cache = PagedKvCache(self.cache_shape, self.dtype, self.device)
        # CUDA decode kernel where it loads (kernels/backend.py), else the torch reference.
        self.attention = make_attention(self.device, self.dtype, self.head_dim, kv.block_size)
        self._generators: dict[str, torch.Generator | None] = {}
        self.stop_token_ids = stop_token_tensor(model_stop_token_ids(model), self.device)  # min_tokens.py

    def forget(self, request_id: str) -> None:
        """Drops per-request state (its sampling generator) once the request is finished."""
        self._generators.pop(request_id, None)

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput) -> dict[str, int]:
        """Runs the step; returns the sampled token of each request that samples this step."""
        input_ids, positions, metadata = self._prepare(step)
        hidden = self._forward(input_ids, positions, metadata)
        sampling_chunks = [c for c in step.chunks if c.samples_token]
        if not sampling_chunks:
            return {}
        last_rows = [metadata.query_start_loc_host[i + 1] - 1 for i, c in enumerate(step.chunks) if c.samples_token]
        logits = self.model.lm_head(hidden[last_rows])
        options = [c.request.sampling for c in sampling_chunks]
        generators = [self._generator_for(c.request) for c in sampling_chunks]
        logits = apply_min_tokens(logits, [c.request for c in sampling_chunks], self.stop_token_ids)
        tokens = sample_next_tokens(logits, options, generators)
        return {c.request.request_id: token for c, token in zip(sampling_chunks, tokens)}

    def _generator_for(self, request) -> torch.Generator | None:
        if request.request_id not in self._generators:
            self._generators[request.request_id] = make_generator(request.sampling, self.device)
        return self._generators[request.request_id]

    def _prepare(self, step: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        context_lens: list[int] = []
        tables: list[list[int]] = []
        block_size = self.kv.block_size
        for chunk in step.chunks:
            request = chunk.request
            first, last = request.num_computed_tokens, request.num_computed_tokens + chunk.num_new_tokens
            table = self.kv.block_table(request.request_id)
            token_ids.extend(request.token_ids_slice(first, last))
            positions.extend(range(first, last))
            slots.extend(table[p // block_size] * block_size + p % block_size for p in range(first, last))
            starts.append(starts[-1] + chunk.num_new_tokens)
            context_lens.append(last)
            tables.append(table[: -(-last // block_size)])
        slot_mapping = torch.tensor(slots, dtype=torch.long).to(self.device)
        metadata = self.attention.prepare(make_metadata(slot_mapping, starts, context_lens, tables))
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=self.device)  # noqa: E731
        return as_tensor(token_ids), as_tensor(positions), metadata

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        """Hidden states [num_tokens, hidden] after the final norm."""
        body = self.model.model
        hidden = body.embed_tokens(input_ids)
        cos, sin = body.rotary_emb(hidden[None], positions[None])
        cos, sin = cos[0], sin[0]
        for layer_index, layer in enumerate(body.layers):
            residual = hidden
            attention_input = layer.input_layernorm(hidden)
            hidden = residual + self._attention(layer.self_attn, layer_index, attention_input, cos, sin, metadata)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return body.norm(hidden)

    def _attention(self, attn, layer_index, x, cos, sin, metadata: AttentionMetadata) -> torch.Tensor:
        num_tokens = x.shape[0]
        query = attn.q_proj(x).view(num_tokens, self.num_heads, self.head_dim)
        key = attn.k_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        value = attn.v_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        query, key = _apply_rope(query, cos, sin), _apply_rope(key, cos, sin)
        self.attention.write(self.cache, layer_index, metadata.slot_mapping, key, value)
        attended = self.attention.attend(query, self.cache, layer_index, metadata, self.scale)
        return attn.o_proj(attended.reshape(num_tokens, self.num_heads * self.head_dim))
