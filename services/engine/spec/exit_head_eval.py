"""Greedy agreement of exit heads with the full model, before and after training, on held-out prompts.

Two held-out measurements per layer:
- teacher_forced: over real (ChatGPT) replies to held-out prompts, as the heads were trained;
- on_policy: over the model's OWN greedy replies to held-out prompts. This is what a drafter
  sees in serving (it drafts the continuation of the model's own text), so it is the figure
  that predicts acceptance; it is costlier to collect (token-by-token generation), so fewer positions.
"Before" is the model's own final norm + full LM head on layer L's stream (no map, full vocabulary);
"after" is the shipped head (fp16 map, draft vocabulary), so the figure is that of the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.common.chat_template import ChatRole, ChatTurn
from services.engine.spec import exit_head_data as data
from services.engine.spec.exit_head_artifact import HeadArrays
from services.engine.spec.exit_head_training import ModelHead, draft_agreement, unit_rms


@dataclass(frozen=True)
class LayerAgreement:
    """Fractions of held-out positions where the draft equals the full model's greedy token."""

    teacher_forced_untrained: float
    teacher_forced_trained: float
    on_policy_untrained: float
    on_policy_trained: float
    draft_vocab_coverage: float  # teacher-forced positions whose full-model token is in the draft vocabulary


@torch.inference_mode()
def on_policy_set(model, tokenizer, conversations, num_prompts: int, num_tokens: int, config) -> data.DistillationSet:
    """The model's greedy replies (num_tokens at most) to the first num_prompts held-out prompts that
    fit max_prompt_tokens, teacher-forced back through it (so each target is the next reply token)."""
    encoded = []
    for conversation in conversations:
        if len(encoded) >= num_prompts:
            break
        prompt_ids = tokenizer.encode_chat([ChatTurn(ChatRole.USER, conversation.prompt)])
        if len(prompt_ids) > config.max_prompt_tokens:
            continue
        output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=num_tokens, do_sample=False)
        reply = output[0, len(prompt_ids) :].tolist()
        if len(reply) >= 2:
            encoded.append(data.EncodedConversation(prompt_ids + reply, len(prompt_ids)))
    return data.distill(model, encoded, config.layers)


def _agreements(model, parts, vocab_ids, arrays: HeadArrays, layer: int, examples: data.DistillationSet):
    """(untrained, trained) agreement at one layer over one set."""
    if examples.target_ids.numel() == 0:
        return 0.0, 0.0
    norm, eps = parts.norm_weight, parts.eps
    full = ModelHead(norm, eps, model.lm_head.weight.detach())
    all_ids = torch.arange(full.draft_weight.shape[0])
    inputs, targets = unit_rms(examples.hidden[layer]), examples.target_ids
    untrained = draft_agreement(full, all_ids, inputs, targets, None)
    residual_map = (torch.from_numpy(arrays.down).float(), torch.from_numpy(arrays.up).float())
    return untrained, draft_agreement(parts, vocab_ids, inputs, targets, residual_map)


def evaluate_layers(
    model,
    parts: ModelHead,
    vocab_ids: torch.Tensor,
    heads: dict[int, HeadArrays],
    sets: dict[str, data.DistillationSet],
) -> dict[int, LayerAgreement]:
    """LayerAgreement per trained layer over sets["teacher_forced"] and sets["on_policy"]."""
    teacher_forced, on_policy = sets["teacher_forced"], sets["on_policy"]
    coverage = float(torch.isin(teacher_forced.target_ids, vocab_ids).float().mean())
    result = {}
    for layer, arrays in heads.items():
        tf_before, tf_after = _agreements(model, parts, vocab_ids, arrays, layer, teacher_forced)
        op_before, op_after = _agreements(model, parts, vocab_ids, arrays, layer, on_policy)
        result[layer] = LayerAgreement(tf_before, tf_after, op_before, op_after, coverage)
    return result
