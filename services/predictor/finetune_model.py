"""The fine-tuned length encoder in torch: MiniLM's top layers retrained to predict output length.

all-MiniLM-L6-v2 was trained for semantic similarity; a ridge over its frozen sentence vector
ranks ShareGPT lengths at tau ~0.29. Retraining its top layers on the length target lifts that
to ~0.40 alone (docs/benchmarks/predictor/README.md). The encoder is split in two:

    word pieces --[bottom: embeddings + layers 0..num_frozen_layers-1, frozen]--> hidden states [n, t, 384]
    hidden states --[top: the remaining layers, retrained; mean pooling; linear head]--> scores [n, G]

The bottom is the packaged MiniLM, unchanged: one shared ONNX graph per machine (finetune_export.py),
like the frozen embedding graph. Only the top (two layers + head, ~3.5M weights, ~3.6 MB as int8)
belongs to a trained model and ships in its directory. Score g estimates log1p(output tokens) for
generator column g of the model's input layout (model_inputs.py), so one prompt is encoded once
for all generators.

Training-only module (needs torch and transformers); serving runs the exported graphs
(finetune_encoder.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from services.predictor.embedding import weights_dir

HIDDEN_SIZE = 384  # MiniLM-L6 hidden width
NUM_LAYERS = 6  # MiniLM-L6 transformer layers
NUM_FROZEN_LAYERS = 4  # default layers in the shared bottom graph; the rest are retrained
MASK_FILL = -1.0e4  # added to attention logits of padded word pieces (exp() underflows to 0)


@dataclass(frozen=True)
class FinetuneSettings:
    """How the top layers are trained (defaults: the measured recipe of the shipped model)."""

    seed: int = 0  # seeds head initialization, dropout and batch order
    num_threads: int = 2  # torch intra-op threads (results are deterministic for a given count)
    num_folds: int = 3  # out-of-fold encoders that score the training rows for the trees
    num_epochs: int = 3  # passes over the training prompts per encoder
    batch_size: int = 32  # prompts per optimizer step
    layer_learning_rate: float = 1e-4  # peak AdamW rate of the retrained transformer layers
    head_learning_rate: float = 1e-3  # peak AdamW rate of the linear head
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    warmup_fraction: float = 0.06  # share of steps with a linearly rising rate (then linear decay to 0)
    dropout: float = 0.1  # dropout on the pooled vector (the layers keep MiniLM's own 0.1)
    max_grad_norm: float = 1.0  # gradient clipping
    ranking_weight: float = 0.0  # weight of the pairwise ranking loss next to regression (finetune_loss.py)
    soft_pair_weight: float = 0.0  # weight of the soft pairs from many generators' lengths (finetune_loss.py)
    # MiniLM layers left frozen in the shared bottom graph; the others are retrained. 0 retrains all six:
    # held-out ShareGPT tau of the encoder alone 0.408 -> 0.441 (docs/benchmarks/predictor), ~3x the training.
    num_frozen_layers: int = NUM_FROZEN_LAYERS

    def __post_init__(self) -> None:
        if self.num_threads < 1 or self.num_epochs < 1 or self.batch_size < 1:
            raise ValueError("num_threads, num_epochs and batch_size must be >= 1")
        if self.num_folds < 2:
            raise ValueError(f"num_folds must be >= 2 (out-of-fold scores), got {self.num_folds}")
        if not (self.layer_learning_rate > 0 and self.head_learning_rate > 0):
            raise ValueError("learning rates must be > 0")
        if not 0.0 <= self.warmup_fraction < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("warmup_fraction and dropout must be in [0, 1)")
        if self.ranking_weight < 0 or self.soft_pair_weight < 0:
            raise ValueError("ranking_weight and soft_pair_weight must be >= 0")
        check_num_frozen_layers(self.num_frozen_layers)


def check_num_frozen_layers(num_frozen_layers: int) -> None:
    """ValueError unless at least one layer is left to retrain."""
    if not 0 <= num_frozen_layers < NUM_LAYERS:
        raise ValueError(f"num_frozen_layers must be in [0, {NUM_LAYERS - 1}], got {num_frozen_layers}")


def load_base_encoder():
    """The packaged MiniLM (eager attention: exports without SDPA mask nodes), in eval mode."""
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(weights_dir()), local_files_only=True, attn_implementation="eager")
    return encoder.eval()


def top_encoder_class():
    """The TopEncoder torch module class (built lazily so that importing this file needs no torch)."""
    import torch

    class TopEncoder(torch.nn.Module):
        """Retrained layers + mean pooling + linear head: hidden states [n, t, 384] -> scores [n, G].

        Invariant: padded positions (attention_mask 0) change neither the other positions nor the
        pooled vector, so a prompt scores the same alone or padded in a batch (up to rounding).
        """

        def __init__(self, base, num_outputs: int, dropout: float, num_frozen_layers: int) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(
                copy.deepcopy(base.encoder.layer[index]) for index in range(num_frozen_layers, NUM_LAYERS)
            )
            self.dropout = torch.nn.Dropout(dropout)
            self.head = torch.nn.Linear(HIDDEN_SIZE, num_outputs)

        def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            additive = (1.0 - attention_mask[:, None, None, :].to(hidden_states.dtype)) * MASK_FILL
            for layer in self.layers:
                hidden_states = layer(hidden_states, additive)
            mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            pooled = (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            return self.head(self.dropout(pooled))

    return TopEncoder


def new_top_encoder(base, num_outputs: int, settings: FinetuneSettings, initial_bias):
    """A TopEncoder starting from the packaged top layers, head bias = initial_bias (seeded init)."""
    import torch

    torch.manual_seed(settings.seed)
    model = top_encoder_class()(base, num_outputs, settings.dropout, settings.num_frozen_layers)
    with torch.no_grad():
        model.head.bias.copy_(torch.as_tensor(initial_bias, dtype=torch.float32))
    return model
