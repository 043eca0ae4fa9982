"""The Llama-family decoder with its projections fused, run over the paged KV cache.

Per layer and step, in eager mode (the attention backend's write and attend are one launch each
on CUDA):

    rms_norm(hidden)                                   1  F.rms_norm (one operator)
    qkv = x @ W_qkv^T (+ b_qkv)                        1  q, k and v projections in one GEMM
    rope(q|k) = sum_j (q|k)[.., j, :] * M[pos, i, j]   2  one mul + one sum for q and k together
    cache write, attention                             2  the backend (attention.py, kernels/)
    hidden = hidden + attn @ W_o^T                     1  addmm: the residual add inside the GEMM
    rms_norm(hidden)                                   1
    gate_up = x @ W_gu^T                               1  gate and up projections in one GEMM
    silu(gate) * up                                    2
    hidden = hidden + act @ W_down^T                   1  addmm again

RoPE reads a cached table by position: M[pos] = [[cos, -sin], [sin, cos]] over the half-dims,
built once from the model's own rotary embedding (so any rope scaling it applies is kept) and
grown by doubling when a longer position shows up. out_i = sum_j M[i, j] * x_j is Hugging Face's
x * cos + rotate_half(x) * sin with the same products and the same single add, so it is bit-exact.

Weights are fused once at load: the fused tensor is the only storage, and the Hugging Face modules'
q/k/v and gate/up weights are re-pointed at views of it (no copy kept twice; generate() still works).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from services.engine.attention import AttentionMetadata

INITIAL_ROPE_POSITIONS = 4096  # table rows built first; doubled when a position needs more


@dataclass
class FusedLayer:
    """One decoder layer's weights, fused."""

    input_norm: torch.Tensor  # [hidden]
    qkv_weight: torch.Tensor  # [(heads + 2 * kv_heads) * head_dim, hidden]
    qkv_bias: torch.Tensor | None  # Qwen2 (and attention_bias Llamas) only
    o_weight_t: torch.Tensor  # [heads * head_dim, hidden] (a transposed view)
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor  # [hidden]
    gate_up_weight: torch.Tensor  # [2 * intermediate, hidden]
    gate_up_bias: torch.Tensor | None
    down_weight_t: torch.Tensor  # [intermediate, hidden] (a transposed view)
    down_bias: torch.Tensor | None


def _fuse(modules: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenates the Linear weights (and biases) by output row; re-points each module at its view."""
    weight = torch.cat([m.weight.detach() for m in modules], dim=0)
    biases = [m.bias for m in modules]
    bias = torch.cat([b.detach() for b in biases], dim=0) if all(b is not None for b in biases) else None
    if bias is None and any(b is not None for b in biases):
        raise ValueError("cannot fuse projections where only some have a bias")
    start = 0
    for module in modules:
        rows = module.weight.shape[0]
        module.weight = torch.nn.Parameter(weight[start : start + rows], requires_grad=False)
        if bias is not None:
            module.bias = torch.nn.Parameter(bias[start : start + rows], requires_grad=False)
        start += rows
    return weight, bias


def _bias(linear: torch.nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


def fuse_layer(layer: torch.nn.Module) -> FusedLayer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv_weight, qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
    gate_up_weight, gate_up_bias = _fuse([mlp.gate_proj, mlp.up_proj])
    return FusedLayer(
        input_norm=layer.input_layernorm.weight.detach(),
        qkv_weight=qkv_weight,
        qkv_bias=qkv_bias,
        o_weight_t=attn.o_proj.weight.detach().t(),
        o_bias=_bias(attn.o_proj),
        post_norm=layer.post_attention_layernorm.weight.detach(),
        gate_up_weight=gate_up_weight,
        gate_up_bias=gate_up_bias,
        down_weight_t=mlp.down_proj.weight.detach().t(),
        down_bias=_bias(mlp.down_proj),
    )


class RopeTable:
    """M[pos] = [[cos, -sin], [sin, cos]] per half-dim, [positions, 1, 2, 2, head_dim / 2], model dtype."""

    def __init__(self, rotary_emb: torch.nn.Module, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self._rotary_emb, self._head_dim, self._dtype, self._device = rotary_emb, head_dim, dtype, device
        self.table = self._build(INITIAL_ROPE_POSITIONS)

    def _build(self, num_positions: int) -> torch.Tensor:
        positions = torch.arange(num_positions, device=self._device)[None]
        probe = torch.empty(1, 1, self._head_dim, dtype=self._dtype, device=self._device)
        cos, sin = self._rotary_emb(probe, positions)  # [1, positions, head_dim], halves repeated
        half = self._head_dim // 2
        cos, sin = cos[0, :, :half], sin[0, :, :half]
        rows = torch.stack([torch.stack([cos, -sin], dim=1), torch.stack([sin, cos], dim=1)], dim=1)
        return rows[:, None].to(self._dtype).contiguous()

    def ensure(self, num_positions: int) -> None:
        """Grows the table (host decision: the step's max_seq_len) to cover positions < num_positions."""
        if num_positions > self.table.shape[0]:
            size = self.table.shape[0]
            while size < num_positions:
                size *= 2
            self.table = self._build(size)

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """[num_tokens, 1, 2, 2, head_dim / 2]: gathered once per step, shared by every layer."""
        return self.table.index_select(0, positions)


def apply_rope(x: torch.Tensor, rope_rows: torch.Tensor) -> torch.Tensor:
    """x [tokens, heads, head_dim] (any strides with a contiguous last dim) -> roped, contiguous."""
    tokens, heads, head_dim = x.shape
    pairs = x.unflatten(-1, (1, 2, head_dim // 2))  # [tokens, heads, 1, j, half]
    return (pairs * rope_rows).sum(dim=-2).view(tokens, heads, head_dim)


class FusedLlama:
    """The decoder over the paged cache; owns the fused weights and the RoPE table."""

    def __init__(self, model: torch.nn.Module, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        body = model.model
        parameter = next(model.parameters())
        self.embed_tokens = body.embed_tokens
        self._head = model.lm_head
        # Plain Embedding / Linear modules are called as their functional op: a module call's Python costs
        # about as much as the op itself on a decode step (their parameters are read at each call).
        self._plain_embedding = type(body.embed_tokens) is torch.nn.Embedding and body.embed_tokens.max_norm is None
        self._plain_head = type(model.lm_head) is torch.nn.Linear
        self.final_norm = body.norm.weight.detach()
        self.eps = body.norm.variance_epsilon
        self.layers = [fuse_layer(layer) for layer in body.layers]
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope = RopeTable(body.rotary_emb, head_dim, parameter.dtype, parameter.device)
        self.intermediate_size = self.layers[0].gate_up_weight.shape[0] // 2

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        metadata: AttentionMetadata,
        attention,
        cache,
        scale: float,
    ) -> torch.Tensor:
        """Hidden states [num_tokens, hidden] after the final norm; positions < metadata.max_seq_len."""
        hidden = self.forward_layers(input_ids, positions, metadata, attention, cache, scale, len(self.layers))
        return F.rms_norm(hidden, self.final_norm.shape, self.final_norm, self.eps)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's LM head on hidden states [rows, hidden] -> logits [rows, vocab]."""
        head = self._head
        return F.linear(hidden, head.weight, head.bias) if self._plain_head else head(hidden)

    def forward_layers(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        metadata: AttentionMetadata,
        attention,
        cache,
        scale: float,
        num_layers: int,
    ) -> torch.Tensor:
        """The residual stream [num_tokens, hidden] after the first num_layers layers, before the final
        norm (an early exit's input); only those layers' KV is written."""
        self.rope.ensure(metadata.max_seq_len)
        rope_rows = self.rope.rows(positions)
        embed = self.embed_tokens
        hidden = F.embedding(input_ids, embed.weight) if self._plain_embedding else embed(input_ids)
        for index, layer in enumerate(self.layers[:num_layers]):
            hidden = self._layer(index, layer, hidden, rope_rows, metadata, attention, cache, scale)
        return hidden

    def _layer(
        self,
        index: int,
        layer: FusedLayer,
        hidden: torch.Tensor,
        rope_rows: torch.Tensor,
        metadata: AttentionMetadata,
        attention,
        cache,
        scale: float,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        x = F.rms_norm(hidden, layer.input_norm.shape, layer.input_norm, self.eps)
        qkv = F.linear(x, layer.qkv_weight, layer.qkv_bias).view(num_tokens, heads + 2 * kv_heads, head_dim)
        roped = apply_rope(qkv[:, : heads + kv_heads], rope_rows)
        query, key, value = roped[:, :heads], roped[:, heads:], qkv[:, heads + kv_heads :]
        attention.write(cache, index, metadata.slot_mapping, key, value)
        attended = attention.attend(query, cache, index, metadata, scale).reshape(num_tokens, heads * head_dim)
        hidden = _add_linear(hidden, attended, layer.o_weight_t, layer.o_bias)
        x = F.rms_norm(hidden, layer.post_norm.shape, layer.post_norm, self.eps)
        gate_up = F.linear(x, layer.gate_up_weight, layer.gate_up_bias)
        gate, up = gate_up[:, : self.intermediate_size], gate_up[:, self.intermediate_size :]
        return _add_linear(hidden, F.silu(gate) * up, layer.down_weight_t, layer.down_bias)


def _add_linear(residual: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None):
    """residual + x @ weight_t (+ bias): the residual add folded into the GEMM (one operator)."""
    out = torch.addmm(residual, x, weight_t)
    return out if bias is None else out + bias
