"""Self-distillation data for exit heads: ShareGPT first turns, teacher-forced through the full model.

Each conversation is encoded as the engine serves it (the tokenizer's chat template with the
assistant turn opened, then the real assistant reply), run ONCE through the full model, and every
reply position yields one example per candidate layer:

    input   the residual stream after L layers at that position   (hidden_states[L], before any norm)
    target  the full model's own logits at that position          (lm_head(norm(hidden after 30 layers)))

Teacher forcing over real replies instead of generating the model's own continuations: one
batched forward gives hundreds of positions (~200 tokens/s on one CPU thread here) where greedy
generation gives ~4-15 tokens/s, and the targets are still the model's own predictions; only the
context text is ChatGPT's rather than the model's. The held-out report also measures agreement on
the model's own greedy continuations (exit_head_eval.py), which is what drafting sees.

The held-out split is by NORMALIZED PROMPT TEXT (a hash of it), never by conversation id: the same
prompt asked twice must not sit on both sides.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from services.common.chat_template import ChatRole, ChatTurn
from services.common.tokenizer import Tokenizer

SHAREGPT_FILE = "sharegpt/sharegpt_v3_first_turn.dev.jsonl.gz"


@dataclass(frozen=True)
class Conversation:
    """One first turn: the user's prompt and the assistant's reply."""

    prompt: str
    response: str


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids of prompt (chat template, assistant turn opened) + reply; reply starts at reply_start."""

    token_ids: list[int]
    reply_start: int  # index of the first reply token; positions reply_start - 1 .. end - 2 predict reply tokens


@dataclass
class DistillationSet:
    """Examples of one split: per candidate layer its inputs, and the full model's outputs."""

    hidden: dict[int, torch.Tensor]  # L -> float32 [num_positions, H] residual stream after L layers
    final_hidden: torch.Tensor  # float32 [num_positions, H] after all layers and the final norm
    target_ids: torch.Tensor  # int64 [num_positions] the full model's greedy token (full vocabulary)
    num_conversations: int


def normalized_prompt(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: two prompts equal under this are the same prompt."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def prompt_hash(text: str, seed: int) -> float:
    """A uniform number in [0, 1) from (seed, normalized prompt): the split and the sample order."""
    digest = hashlib.sha256(f"{seed}:{normalized_prompt(text)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def read_conversations(data_dir: Path) -> list[Conversation]:
    """ShareGPT first turns with a non-empty prompt and reply, one per normalized prompt (first kept)."""
    path = data_dir / SHAREGPT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path} (see ../shared/data/README.md)")
    seen: set[str] = set()
    conversations = []
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            prompt, response = record.get("prompt") or "", record.get("response") or ""
            key = normalized_prompt(prompt)
            if not key or not response.strip() or key in seen:
                continue
            seen.add(key)
            conversations.append(Conversation(prompt, response))
    return conversations


def split_and_sample(
    conversations: list[Conversation], *, heldout_fraction: float, num_train: int, num_heldout: int, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out): a prompt is held out when prompt_hash < heldout_fraction; each side is
    then taken in an order drawn from another hash of the prompt (independent of the file's order)."""
    train, heldout = [], []
    for conversation in conversations:
        side = heldout if prompt_hash(conversation.prompt, seed) < heldout_fraction else train
        side.append(conversation)
    order = seed + 1

    def ranked(side: list[Conversation], count: int) -> list[Conversation]:
        return sorted(side, key=lambda c: prompt_hash(c.prompt, order))[:count]

    return ranked(train, num_train), ranked(heldout, num_heldout)


def encode(
    tokenizer: Tokenizer, conversation: Conversation, *, max_prompt_tokens: int, max_reply_tokens: int
) -> EncodedConversation | None:
    """The served encoding of the prompt (None when longer than max_prompt_tokens) + the reply's
    first max_reply_tokens tokens."""
    prompt_ids = tokenizer.encode_chat([ChatTurn(ChatRole.USER, conversation.prompt)])
    if len(prompt_ids) > max_prompt_tokens:
        return None
    reply_ids = tokenizer.encode(conversation.response, add_bos=False)[:max_reply_tokens]
    if len(reply_ids) < 2:
        return None
    return EncodedConversation(prompt_ids + reply_ids, len(prompt_ids))


@torch.inference_mode()
def distill(model: torch.nn.Module, encoded: list[EncodedConversation], layers: tuple[int, ...]) -> DistillationSet:
    """Runs each sequence once through the full model and keeps the positions that predict a reply
    token (drafting happens while the model writes its reply, not over the user's text)."""
    empty = torch.empty(0, model.config.hidden_size)  # keeps torch.cat defined when `encoded` is empty
    hidden: dict[int, list[torch.Tensor]] = {layer: [empty] for layer in layers}
    finals, targets = [empty], [torch.empty(0, dtype=torch.int64)]
    for item in encoded:
        ids = torch.tensor([item.token_ids])
        output = model(ids, output_hidden_states=True)
        keep = slice(item.reply_start - 1, len(item.token_ids) - 1)  # positions that predict a reply token
        for layer in layers:
            hidden[layer].append(output.hidden_states[layer][0, keep].float())
        final = output.hidden_states[-1][0, keep].float()  # HF: the last entry is after the final norm
        finals.append(final)
        targets.append(output.logits[0, keep].argmax(dim=-1))
    return DistillationSet(
        {layer: torch.cat(rows) for layer, rows in hidden.items()}, torch.cat(finals), torch.cat(targets), len(encoded)
    )
