"""Builds a model's exit-head artifact and its before/after report (`alise spec train-exit-heads`).

    data (exit_head_data.py) -> draft vocabulary -> per layer: agreement before, train, agreement after
    -> on-policy agreement over the model's own greedy replies (exit_head_eval.py)
    -> draft / decode / verify costs on the engine's decoder (exit_head_costs.py)
    -> heads/<model>.npz + .json (exit_head_artifact.py) and the report JSON

Runs on one torch thread (the caller sets it) in float32; deterministic for a given machine.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from services.common.model_catalog import DEFAULT_MODEL
from services.common.tokenizer import load_tokenizer
from services.engine.model_loader import load_model
from services.engine.spec import exit_head_data as data
from services.engine.spec.exit_head_artifact import SHIPPED_DIR, ExitHeadArtifact, HeadArrays, write_artifact
from services.engine.spec.exit_head_costs import DraftCosts, measure_draft_costs
from services.engine.spec.exit_head_eval import LayerAgreement, evaluate_layers, on_policy_set
from services.engine.spec.exit_head_fingerprint import model_fingerprint
from services.engine.spec.exit_head_report import report_document
from services.engine.spec.exit_head_training import (
    HeadTrainingConfig,
    ModelHead,
    draft_vocabulary,
    train_head,
    unit_rms,
)
from services.engine.spec.exit_heads import heads_from_artifact

log = logging.getLogger(__name__)
DEFAULT_LAYERS = (6, 9, 12, 15, 18, 21, 24, 27)


@dataclass(frozen=True)
class ExitHeadBuildConfig:
    """One build: which model, which data, which heads (recorded in the artifact and the report)."""

    data_dir: Path  # ../shared/data
    model: str = DEFAULT_MODEL  # a --model value with a real checkpoint
    out_dir: Path = SHIPPED_DIR  # where <model>.npz/.json go
    layers: tuple[int, ...] = DEFAULT_LAYERS  # candidate exit layers L
    draft_vocab_size: int = 4096  # tokens the heads score (the most predicted); 0 = the full vocabulary
    num_train_conversations: int = 150
    num_heldout_conversations: int = 30
    heldout_fraction: float = 0.1  # of normalized prompt texts
    max_prompt_tokens: int = 192  # longer prompts are skipped
    max_reply_tokens: int = 160  # replies are cut here
    num_generated_prompts: int = 6  # held-out prompts answered greedily by the model (on-policy agreement)
    num_generated_tokens: int = 48
    training: HeadTrainingConfig = field(default_factory=HeadTrainingConfig)
    cost_dtype: str = "auto"  # costs measured in: auto (the engine's CPU default), float32 or bfloat16
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.layers or sorted(set(self.layers)) != list(self.layers) or self.layers[0] < 1:
            raise ValueError(f"layers must be ascending, distinct and >= 1, got {self.layers}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.cost_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"cost_dtype must be auto, float32 or bfloat16, got {self.cost_dtype!r}")
        for name in ("num_train_conversations", "num_heldout_conversations", "max_prompt_tokens", "max_reply_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _encoded_splits(config: ExitHeadBuildConfig, tokenizer) -> tuple[list, list, list]:
    """(train, held-out) encoded conversations, and the held-out prompts for on-policy generation."""
    conversations = data.read_conversations(config.data_dir)
    train, heldout = data.split_and_sample(
        conversations,
        heldout_fraction=config.heldout_fraction,
        num_train=config.num_train_conversations,
        num_heldout=config.num_heldout_conversations,
        seed=config.seed,
    )
    limits = {"max_prompt_tokens": config.max_prompt_tokens, "max_reply_tokens": config.max_reply_tokens}
    encoded_train = [e for e in (data.encode(tokenizer, c, **limits) for c in train) if e is not None]
    encoded_heldout = [e for e in (data.encode(tokenizer, c, **limits) for c in heldout) if e is not None]
    return encoded_train, encoded_heldout, heldout


def _train_all(config, parts: ModelHead, train_set: data.DistillationSet) -> dict[int, HeadArrays]:
    heads = {}
    for layer in config.layers:
        log.info("training the head at layer %d on %d positions", layer, train_set.target_ids.numel())
        down, up = train_head(parts, unit_rms(train_set.hidden[layer]), train_set.final_hidden, config.training)
        heads[layer] = HeadArrays(down.numpy().astype(np.float16), up.numpy().astype(np.float16))
    return heads


def _distillation_sets(config: ExitHeadBuildConfig, model, tokenizer) -> tuple:
    """(train set, held-out set, held-out conversations) of the full model's own predictions."""
    train, heldout, heldout_conversations = _encoded_splits(config, tokenizer)
    log.info("distilling %d train + %d held-out conversations", len(train), len(heldout))
    return data.distill(model, train, config.layers), data.distill(model, heldout, config.layers), heldout_conversations


def cost_dtype(name: str) -> torch.dtype:
    """The dtype costs are measured in: "auto" = what the engine serves on this CPU (bf16 where native)."""
    if name == "auto":
        from services.engine.app import cpu_has_native_bf16

        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _measure_costs(config: ExitHeadBuildConfig, artifact: ExitHeadArtifact) -> DraftCosts:
    """Costs on a fresh copy of the model in the serving dtype, with the artifact's heads bound to it."""
    dtype = cost_dtype(config.cost_dtype)
    log.info("measuring draft, decode and verify costs in %s", dtype)
    serving = load_model(config.model, dtype=dtype, device=torch.device("cpu"), seed=config.seed).model
    return measure_draft_costs(serving, heads_from_artifact(serving, artifact))


def build_exit_heads(config: ExitHeadBuildConfig) -> tuple[Path, Path, dict]:
    """Trains, measures and writes the artifact; returns (npz path, json path, report document)."""
    timings_s: dict[str, float] = {}
    mark = started = time.perf_counter()
    loaded = load_model(config.model, dtype=torch.float32, device=torch.device("cpu"), seed=config.seed)
    model, tokenizer = loaded.model, load_tokenizer(loaded.tokenizer)
    if max(config.layers) >= model.config.num_hidden_layers:
        raise ValueError(f"exit layers must be < the model's {model.config.num_hidden_layers} layers")
    train_set, heldout_set, heldout_conversations = _distillation_sets(config, model, tokenizer)
    vocab_ids = draft_vocabulary(train_set.target_ids, config.draft_vocab_size or model.config.vocab_size)
    norm, lm_weight = model.model.norm.weight.detach(), model.lm_head.weight.detach()
    parts = ModelHead(norm, float(model.model.norm.variance_epsilon), lm_weight.index_select(0, vocab_ids))
    timings_s["distill"], mark = time.perf_counter() - mark, time.perf_counter()
    heads = _train_all(config, parts, train_set)
    timings_s["train"], mark = time.perf_counter() - mark, time.perf_counter()
    generated = on_policy_set(
        model, tokenizer, heldout_conversations, config.num_generated_prompts, config.num_generated_tokens, config
    )
    agreement = evaluate_layers(model, parts, vocab_ids, heads, {"teacher_forced": heldout_set, "on_policy": generated})
    timings_s["evaluate"], mark = time.perf_counter() - mark, time.perf_counter()
    metadata = _metadata(config, agreement, model, (train_set, heldout_set, generated))
    metadata["costs"] = {"draft_cost_ratio": {}, "verify_cost_ratio": {}}  # measured next, with the bound heads
    artifact = ExitHeadArtifact(metadata, heads, vocab_ids.numpy().astype(np.int32))
    costs = _measure_costs(config, artifact)
    timings_s["costs"] = time.perf_counter() - mark
    metadata["costs"] = {
        "dtype": str(cost_dtype(config.cost_dtype)).removeprefix("torch."),
        "decode_step_ms": round(costs.decode_step_ms, 4),
        "draft_cost_ratio": {str(k): round(v, 4) for k, v in costs.draft_cost_ratio().items()},
        "verify_cost_ratio": {str(k): round(v, 4) for k, v in costs.verify_cost_ratio().items()},
    }
    npz_path, json_path = write_artifact(config.out_dir, loaded.model_name, artifact)
    timings_s["total"] = time.perf_counter() - started
    report = report_document(config, metadata, agreement, costs, json_path, timings_s)
    return npz_path, json_path, report


def _metadata(config, agreement: dict[int, LayerAgreement], model, sets: tuple) -> dict:
    """The artifact's json (without costs and the sha256, added later); sets: train, held-out, on-policy."""
    train_set, heldout_set, generated = sets
    recipe = {key: value for key, value in asdict(config).items() if key not in ("data_dir", "out_dir", "training")}
    recipe["training"] = asdict(config.training)
    recipe["method"] = (
        "self-distillation: teacher forcing over ShareGPT first-turn replies (chat template); per layer a low-rank "
        "residual map trained with KL to the full model's softmax over the draft vocabulary"
    )
    return {
        "model": config.model,
        "fingerprint": model_fingerprint(model),
        "recipe": recipe,
        "data": {
            "source": data.SHAREGPT_FILE,
            "split": "held out when sha256(seed:normalized prompt) < heldout_fraction",
            "num_train_conversations": train_set.num_conversations,
            "num_train_positions": int(train_set.target_ids.numel()),
            "num_heldout_conversations": heldout_set.num_conversations,
            "num_heldout_positions": int(heldout_set.target_ids.numel()),
            "num_on_policy_positions": int(generated.target_ids.numel()),
        },
        "agreement": _agreement_tables(agreement, has_on_policy=generated.target_ids.numel() > 0),
    }


def _agreement_tables(agreement: dict[int, LayerAgreement], has_on_policy: bool) -> dict:
    """Per-layer agreement tables by name; the on-policy ones only when measured (exit_heads.py prefers them)."""
    fields = {"trained": "teacher_forced_trained", "untrained": "teacher_forced_untrained"}
    if has_on_policy:
        fields |= {"on_policy_trained": "on_policy_trained", "on_policy_untrained": "on_policy_untrained"}
    return {name: {str(k): round(getattr(a, field), 4) for k, a in agreement.items()} for name, field in fields.items()}
