"""Early-exit heads: turn the residual stream after the first L decoder layers into a draft token.

The engine's early-exit drafter runs 1-token queries through layers [0, L) of the served model
(FusedLlama's layers over the paged cache) and hands the residual stream (before the final norm)
to a head of this module:

    hidden [n, H] --(h + (h @ down^T) @ up^T)--> rms_norm(., final_norm, eps) --> @ W[draft vocab]^T --> argmax
                    trained low-rank residual map  the model's OWN final norm     the model's OWN LM head rows

The map is the only trained part (exit_head_training.py: self-distillation, fp16 in the shipped
artifact). The norm and LM head are views of the model's weights; with a reduced draft vocabulary
(the tokens the full model actually predicts) the head keeps a gathered copy of those rows only,
so a draft pays N x H instead of the 49,152 x 576 LM head (which costs about 8 of SmolLM2's 30 layers).
Token ids returned are always ids of the FULL vocabulary.

`untrained_exit_heads` is the no-training baseline (identity map, full vocabulary): with L equal
to the model's depth it is exactly the model's own last-layer prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from services.engine.spec.exit_head_artifact import SHIPPED_DIR, ExitHeadArtifact, artifact_paths, read_artifact
from services.engine.spec.exit_head_fingerprint import ExitHeadsMismatch, check_fingerprint, fingerprint_mismatch

__all__ = [
    "ExitHead",
    "ExitHeadSet",
    "ExitHeadsMismatch",
    "ExitHeadsUnavailable",
    "expected_tokens_per_verify",
    "heads_from_artifact",
    "load_exit_heads",
    "untrained_exit_heads",
]
ON_POLICY_KEY = "on_policy_trained"  # artifact agreement over the model's own greedy replies


class ExitHeadsUnavailable(ValueError):
    """No trained heads exist for this model (the caller may fall back to untrained_exit_heads)."""


class ExitHead:
    """One candidate exit layer: its trained map (or none) + the model's final norm and LM head."""

    def __init__(
        self,
        num_layers: int,
        norm_weight: torch.Tensor,
        eps: float,
        lm_weight: torch.Tensor,
        draft_vocab_ids: torch.Tensor | None = None,
        residual_map: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.num_layers = num_layers  # decoder layers run before this head (L)
        self.norm_weight, self.eps = norm_weight, eps  # the model's final norm (a view)
        self.lm_weight = lm_weight  # [V or N, H]: the LM head (a view) or its draft-vocab rows
        self.draft_vocab_ids = draft_vocab_ids  # int64 [N] full-vocab id of each lm_weight row; None = identity
        self.down, self.up = residual_map if residual_map is not None else (None, None)  # [r, H], [H, r]

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, V or N] logits over the head's vocabulary (rows of lm_weight), in the model's dtype."""
        hidden = hidden.to(self.norm_weight.dtype)
        if self.down is not None:
            hidden = hidden + F.linear(F.linear(hidden, self.down), self.up)
        return F.linear(F.rms_norm(hidden, self.norm_weight.shape, self.norm_weight, self.eps), self.lm_weight)

    def draft_token_ids(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [n, hidden_size] = residual stream after L layers -> int64 [n] full-vocabulary ids."""
        rows = self.draft_logits(hidden).argmax(dim=-1)
        return rows if self.draft_vocab_ids is None else self.draft_vocab_ids.index_select(0, rows)


def expected_tokens_per_verify(agreement: float, num_draft_tokens: int) -> float:
    """E[tokens a verify emits] with k drafts each accepted with probability a (independently):
    1 + a + ... + a^k = (1 - a^(k+1)) / (1 - a); the target's own token always counts."""
    if agreement >= 1.0:
        return float(num_draft_tokens + 1)
    return (1.0 - agreement ** (num_draft_tokens + 1)) / (1.0 - agreement)


@dataclass
class ExitHeadSet:
    """The candidate exit layers of one model, with what is known of each.

    Costs are fractions of one plain decode step (the full model on a 1-token query + LM head):
    draft_cost[L] per draft token, verify_cost[k] for a (k+1)-token verify query. speedup(L, k) =
    E[tokens per verify] / (k * draft_cost[L] + verify_cost(k)), the decode-rate ratio versus no drafting.
    """

    heads: dict[int, ExitHead]
    agreement: dict[int, float]  # held-out greedy agreement with the full model, per L
    draft_cost: dict[int, float]  # per draft token, fraction of a decode step, per L
    verify_cost: dict[int, float] = field(default_factory=dict)  # per k; missing k: 1.0 (a decode step)
    layers: tuple[int, ...] = ()  # candidate L values, ascending (set from heads)

    def __post_init__(self) -> None:
        self.layers = tuple(sorted(self.heads))

    def head(self, num_layers: int) -> ExitHead:
        """The head after `num_layers` layers; ValueError naming the valid layers otherwise."""
        if num_layers not in self.heads:
            raise ValueError(f"no exit head after {num_layers} layers; valid layers: {list(self.layers)}")
        return self.heads[num_layers]

    def speedup(self, num_layers: int, num_draft_tokens: int) -> float:
        """Expected decode-rate ratio of drafting k tokens at layer L (see the class docstring)."""
        agreement = self.agreement.get(num_layers, 0.0)
        cost = num_draft_tokens * self.draft_cost[num_layers] + self.verify_cost.get(num_draft_tokens, 1.0)
        return expected_tokens_per_verify(agreement, num_draft_tokens) / cost

    def break_even_agreement(self, num_layers: int, num_draft_tokens: int) -> float:
        """The per-draft acceptance at which drafting k tokens at layer L pays for itself (speedup 1):
        the smallest a with E[tokens per verify](a, k) >= k * draft_cost[L] + verify_cost(k); 1.0 when
        even a = 1 does not pay."""
        cost = num_draft_tokens * self.draft_cost[num_layers] + self.verify_cost.get(num_draft_tokens, 1.0)
        low, high = 0.0, 1.0
        if expected_tokens_per_verify(high, num_draft_tokens) < cost:
            return 1.0
        for _ in range(40):  # E is increasing in a: bisection
            middle = (low + high) / 2
            if expected_tokens_per_verify(middle, num_draft_tokens) >= cost:
                high = middle
            else:
                low = middle
        return high

    def best_layer(self, num_draft_tokens: int) -> int:
        """The L maximising speedup(L, k); the deepest layer when no agreement was measured."""
        if num_draft_tokens < 1:
            raise ValueError(f"num_draft_tokens must be >= 1, got {num_draft_tokens}")
        if not self.agreement:
            return self.layers[-1]
        return max(self.layers, key=lambda layer: (self.speedup(layer, num_draft_tokens), -layer))


def _model_parts(model: torch.nn.Module) -> tuple[torch.Tensor, float, torch.Tensor, int]:
    """(final norm weight, eps, LM head weight, number of layers), as views of the model."""
    body = model.model
    return body.norm.weight.detach(), float(body.norm.variance_epsilon), model.lm_head.weight.detach(), len(body.layers)


def _analytic_draft_cost(model: torch.nn.Module, num_layers: int, head_rows: int) -> float:
    """Weights read per draft token over those of a decode step (batch 1 is bandwidth-bound)."""
    body = model.model
    layer_params = sum(p.numel() for p in body.layers[0].parameters())
    lm_rows, hidden = model.lm_head.weight.shape
    return (num_layers * layer_params + head_rows * hidden) / (len(body.layers) * layer_params + lm_rows * hidden)


def untrained_exit_heads(model: torch.nn.Module, layers, agreement: dict[int, float] | None = None) -> ExitHeadSet:
    """Identity map + the model's own final norm + full LM head at each L in `layers` (1..depth).

    Costs are analytic (weights read); `agreement` may carry measured values for best_layer."""
    norm, eps, lm_weight, depth = _model_parts(model)
    chosen = sorted({int(layer) for layer in layers})
    if not chosen or chosen[0] < 1 or chosen[-1] > depth:
        raise ValueError(f"exit layers must be in [1, {depth}], got {list(layers)}")
    heads = {layer: ExitHead(layer, norm, eps, lm_weight) for layer in chosen}
    cost = {layer: _analytic_draft_cost(model, layer, lm_weight.shape[0]) for layer in chosen}
    return ExitHeadSet(heads, dict(agreement or {}), cost)


def _resolve_artifact(model: torch.nn.Module, model_dir_or_name: str) -> tuple[Path, Path]:
    """The artifact named after the model, else the shipped one whose fingerprint matches."""
    name = Path(model_dir_or_name).name if model_dir_or_name else ""
    npz_path, json_path = artifact_paths(SHIPPED_DIR, name)
    if name and npz_path.is_file() and json_path.is_file():
        return npz_path, json_path
    for candidate in sorted(SHIPPED_DIR.glob("*.json")):
        stored = read_artifact(*artifact_paths(SHIPPED_DIR, candidate.stem)).metadata
        if fingerprint_mismatch(model, stored.get("fingerprint", {})) is None:
            return artifact_paths(SHIPPED_DIR, candidate.stem)
    raise ExitHeadsUnavailable(
        f"no trained exit heads for model {model_dir_or_name!r} (shipped: "
        f"{sorted(p.stem for p in SHIPPED_DIR.glob('*.json'))}); train them with `alise spec train-exit-heads` "
        "or use untrained heads"
    )


def heads_from_artifact(model: torch.nn.Module, artifact: ExitHeadArtifact) -> ExitHeadSet:
    """Binds an artifact's maps to the model's norm and LM head, on the model's device and dtype."""
    norm, eps, lm_weight, _ = _model_parts(model)
    device, dtype = lm_weight.device, norm.dtype
    vocab_ids = None
    if artifact.draft_vocab_ids is not None:
        vocab_ids = torch.from_numpy(artifact.draft_vocab_ids.astype("int64")).to(device)
        lm_weight = lm_weight.index_select(0, vocab_ids)  # the draft vocab's rows: a small copy
    heads = {}
    for layer, arrays in artifact.heads.items():
        down = torch.from_numpy(arrays.down).to(device=device, dtype=dtype)
        up = torch.from_numpy(arrays.up).to(device=device, dtype=dtype)
        heads[layer] = ExitHead(layer, norm, eps, lm_weight, vocab_ids, (down, up))
    metadata = artifact.metadata
    measured = metadata["agreement"]
    chosen = measured.get(ON_POLICY_KEY) or measured["trained"]  # on-policy: what drafting sees
    agreement = {int(k): float(v) for k, v in chosen.items()}
    draft_cost = {int(k): float(v) for k, v in metadata["costs"]["draft_cost_ratio"].items()}
    verify_cost = {int(k): float(v) for k, v in metadata["costs"]["verify_cost_ratio"].items()}
    return ExitHeadSet(heads, agreement, draft_cost, verify_cost)


def load_exit_heads(model: torch.nn.Module, model_dir_or_name: str) -> ExitHeadSet:
    """The trained heads shipped for this model (by name, or by fingerprint for a local directory).

    Raises ExitHeadsUnavailable when none exist, ExitHeadsMismatch (a ValueError) when the named
    artifact was trained on another model, ExitHeadArtifactError when its files are corrupt."""
    npz_path, json_path = _resolve_artifact(model, model_dir_or_name)
    artifact = read_artifact(npz_path, json_path)
    check_fingerprint(model, artifact.metadata.get("fingerprint", {}), str(json_path.name))
    return heads_from_artifact(model, artifact)
