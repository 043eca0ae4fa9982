"""Wires --speculative into an engine: the speculator, and for early exit the runner's drafter and head."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from services.engine.model_runner import ModelRunner
from services.engine.scheduler.cost_model import OnlineStepCostModel
from services.engine.spec.adaptive_drafting import AdaptiveDraftingConfig
from services.engine.spec.draft_cost import DraftCostConfig, StepClock
from services.engine.spec.early_exit_drafter import EarlyExitDrafter
from services.engine.spec.exit_heads import ExitHeadSet, ExitHeadsUnavailable, load_exit_heads, untrained_exit_heads
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
    adaptive = AdaptiveDraftingConfig()
    if config.method is SpeculativeMethod.EARLY_EXIT:
        heads, layer = choose_exit_head(model, model_name, config)
        runner.early_exit = EarlyExitDrafter(heads.head(layer))
        adaptive = _paying_acceptance(heads, layer, config.num_speculative_tokens, adaptive)
    log.info("speculative decoding: %s, up to %d draft tokens per step", config.method, config.num_speculative_tokens)
    clock = StepClock.PROCESS_CPU if runner.device.type == "cpu" else StepClock.WALL
    return Speculator(config, cost_model, max_model_len, adaptive, DraftCostConfig(clock=clock))


def _paying_acceptance(
    heads: ExitHeadSet, layer: int, num_draft_tokens: int, adaptive: AdaptiveDraftingConfig
) -> AdaptiveDraftingConfig:
    """Early-exit drafts cost model time (L layers per draft token), unlike n-gram's: a request keeps
    drafting only while its acceptance beats the break-even rate of the head's measured costs, so a
    request whose drafts do not pay stops (and probes again later) instead of slowing the batch."""
    if layer not in heads.draft_cost:
        return adaptive
    break_even = heads.break_even_agreement(layer, num_draft_tokens)
    expected = heads.speedup(layer, num_draft_tokens)
    log.log(
        logging.WARNING if expected < 1.0 else logging.INFO,
        "early exit at layer %d, %d drafts: expected speedup %.2fx at the measured agreement %.2f; "
        "requests pause drafting below an acceptance of %.2f (break-even)",
        layer,
        num_draft_tokens,
        expected,
        heads.agreement.get(layer, 0.0),
        break_even,
    )
    return replace(adaptive, min_acceptance_rate=max(adaptive.min_acceptance_rate, break_even))


def choose_exit_head(model: torch.nn.Module, model_name: str, config: SpeculativeConfig) -> tuple[ExitHeadSet, int]:
    """The heads and the exit layer: --early-exit-layer, or 0 = the layer with the best measured expected speedup.
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
    heads.head(layer)  # ValueError naming the valid layers
    log.info("early-exit drafting after %d of %d layers", layer, model.config.num_hidden_layers)
    return heads, layer
