"""Trains one exit head per candidate layer by self-distillation (inputs from exit_head_data.py).

Head at layer L (exit_heads.py):  logits = W_d · norm(h + U (D h)),  D [r, H], U [H, r], W_d the
model's LM head rows of the draft vocabulary, norm the model's final RMSNorm. Only D and U train.

Since norm() is scale-invariant, h + U D h = rms(h) * (ĥ + U D ĥ) with ĥ = h / rms(h) gives the same
logits: training runs on ĥ (the raw residual stream has outlier dimensions hundreds of times the
typical scale, which would make the step size depend on them), inference on h, with the same D, U.

Loss: KL(p_full || p_head) over the draft vocabulary, p_full the full model's softmax restricted
to it (soft targets carry more than the argmax: which other tokens the model considered). U starts
at zero, so training starts from the untrained baseline (identity map).

Deterministic: one torch thread, a seeded generator for the init and the batch order, so two
runs on the same machine write the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class HeadTrainingConfig:
    """How each head trains (the artifact records these)."""

    rank: int = 128  # r of the low-rank residual map
    num_epochs: int = 4  # passes over the training positions
    batch_size: int = 256  # positions per step
    learning_rate: float = 2e-3  # Adam, decayed linearly to 0 over all steps
    init_std: float = 0.02  # D's init (U = 0)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rank", "num_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclass(frozen=True)
class ModelHead:
    """The frozen parts every head shares, float32 on the CPU."""

    norm_weight: torch.Tensor  # [H] the model's final norm
    eps: float
    draft_weight: torch.Tensor  # [N, H] LM head rows of the draft vocabulary


def draft_vocabulary(target_ids: torch.Tensor, size: int) -> torch.Tensor:
    """The `size` tokens the full model predicts most often (ties: lower id), int64 ascending."""
    counts = torch.bincount(target_ids)
    order = sorted(range(counts.numel()), key=lambda token: (-int(counts[token]), token))
    return torch.tensor(sorted(order[:size]), dtype=torch.int64)


def unit_rms(hidden: torch.Tensor) -> torch.Tensor:
    """ĥ = h / rms(h) per row (see the module docstring)."""
    return hidden * torch.rsqrt(hidden.pow(2).mean(dim=-1, keepdim=True) + 1e-12)


def head_logits(parts: ModelHead, hidden: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    mapped = hidden + F.linear(F.linear(hidden, down), up)
    return F.linear(F.rms_norm(mapped, parts.norm_weight.shape, parts.norm_weight, parts.eps), parts.draft_weight)


def train_head(
    parts: ModelHead, inputs: torch.Tensor, teacher_hidden: torch.Tensor, config: HeadTrainingConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(D, U) float32 trained on inputs [P, H] (unit-rms residual stream after L layers) against
    the full model's draft-vocabulary logits W_d · teacher_hidden (teacher_hidden: after the final norm)."""
    generator = torch.Generator().manual_seed(config.seed)
    hidden_size = inputs.shape[1]
    down = (torch.randn(config.rank, hidden_size, generator=generator) * config.init_std).requires_grad_()
    up = torch.zeros(hidden_size, config.rank, requires_grad=True)
    optimizer = torch.optim.Adam([down, up], lr=config.learning_rate)
    num_positions = inputs.shape[0]
    steps_per_epoch = -(-num_positions // config.batch_size)
    total_steps = config.num_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total_steps)
    for _ in range(config.num_epochs):
        order = torch.randperm(num_positions, generator=generator)
        for start in range(0, num_positions, config.batch_size):
            rows = order[start : start + config.batch_size]
            with torch.no_grad():
                teacher = F.log_softmax(F.linear(teacher_hidden[rows], parts.draft_weight), dim=-1)
            student = F.log_softmax(head_logits(parts, inputs[rows], down, up), dim=-1)
            loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return down.detach(), up.detach()


@torch.no_grad()
def draft_agreement(
    parts: ModelHead,
    draft_vocab_ids: torch.Tensor,
    inputs: torch.Tensor,
    target_ids: torch.Tensor,
    residual_map: tuple[torch.Tensor, torch.Tensor] | None,
    chunk: int = 1024,
) -> float:
    """Fraction of positions where the head's draft (a full-vocabulary id) equals the full model's token."""
    hits = 0
    for start in range(0, inputs.shape[0], chunk):
        rows = slice(start, start + chunk)
        hidden = inputs[rows]
        if residual_map is not None:
            hidden = hidden + F.linear(F.linear(hidden, residual_map[0]), residual_map[1])
        logits = F.linear(F.rms_norm(hidden, parts.norm_weight.shape, parts.norm_weight, parts.eps), parts.draft_weight)
        hits += int((draft_vocab_ids[logits.argmax(dim=-1)] == target_ids[rows]).sum())
    return hits / max(1, inputs.shape[0])
