"""Wires --speculative into an engine: the speculator, and for early exit the runner's drafter and head."""

from __future__ import annotations

import logging

import torch

from services.engine.model_runner import ModelRunner
from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.spec.early_exit_drafter import EarlyExitDrafter
from services.engine.spec.exit_heads import ExitHead, ExitHeadsUnavailable, load_exit_heads, untrained_exit_heads
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.spec_config import SpeculativeConfig
from services.engine.spec.speculator import Speculator

log = logging.getLogger(__name__)


def make_speculator(
    config: SpeculativeConfig,
    cost_model: OnlineStepCostModel,
    max_model_len: int,
    runner: ModelRunner,
    model: torch.nn.Module,
    model_name: str,
) -> Speculator | None:
    """None when speculation is off; for early exit, also gives the runner its drafter."""
    if not config.enabled:
        return None

    if config.method is SpeculativeMethod.EARLY_EXIT:
        runner.early_exit = EarlyExitDrafter(choose_exit_head(model, model_name, config))
    log.info("speculative decoding: %s, up to %d draft tokens per step", config.method, config.num_speculative_tokens)
    return Speculator(config, cost_model, max_model_len)


def choose_exit_head(model: torch.nn.Module, model_name: str, config: SpeculativeConfig) -> ExitHead:
    """The trained head at --early-exit-layer (0: the layer with the best measured expected speedup).
    A model without trained heads drafts through its own final norm and LM head (low acceptance: the
    issue measured 4-19% on SmolLM2), at half its depth unless a layer is given."""
    try:
        heads = load_exit_heads(model, model_name)
        layer = config.early_exit_layer or heads.best_layer(config.num_speculative_tokens)
    except ExitHeadsUnavailable:
        depth = model.config.num_hidden_layers
        heads = untrained_exit_heads(model, range(1, depth + 1))
        layer = config.early_exit_layer or max(1, depth // 2)
        log.warning("no trained exit heads for %s: early-exit drafts use its own final norm and LM head", model_name)
    head = heads.head(layer)
    log.info("early-exit drafting after %d of %d layers", layer, model.config.num_hidden_layers)
    return head
