"""The prompt of a GenerateRequest, from exactly one of: text, token ids, or chat messages.

    prompt_text       -> tokenizer.encode (the tokenizer's own special tokens, e.g. BOS)
    prompt_token_ids  -> used as given (range-checked)
    messages          -> the model's chat template, then encode without adding special tokens

Besides the ids, the resolved prompt keeps a text for the output-length predictor: the client's
text, or the messages' contents joined by blank lines (what the predictor was trained on is the
user's words, not the template's markup). Token-id prompts have none (the caller decodes them).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.chat_template import ChatRole, ChatTemplateError, ChatTurn
from services.common.contracts import common_pb2, gateway_service_pb2
from services.common.errors import InvalidRequest
from services.common.tokenizer import Tokenizer

_CHAT_ROLES = {
    common_pb2.CHAT_ROLE_SYSTEM: ChatRole.SYSTEM,
    common_pb2.CHAT_ROLE_USER: ChatRole.USER,
    common_pb2.CHAT_ROLE_ASSISTANT: ChatRole.ASSISTANT,
}


@dataclass(frozen=True)
class ResolvedPrompt:
    """Prompt ids for the engine and prompt text for the predictor."""

    token_ids: list[int]  # non-empty, all < vocab_size
    text: str  # the text the predictor reads; "" for a token-id prompt


def num_prompt_chars(request: gateway_service_pb2.GenerateRequest) -> int:
    """Characters to tokenize (decides whether tokenizing leaves the event loop)."""
    return len(request.prompt_text) + sum(len(message.content) for message in request.messages)


def check_prompt_size(request: gateway_service_pb2.GenerateRequest, max_context_tokens: int, max_bytes: int) -> None:
    """Rejects a prompt that cannot fit the context before any tokenizing (cheap: lengths only).

    Tokenizing is the costly step (a 60 MB prompt took 53 s and left the gateway 1.7 GB larger), so a
    prompt longer than `max_bytes` of UTF-8 text (the context times a generous bytes-per-token bound)
    or with more token ids than the context is refused here. A character is at least one byte, so
    the character count rules out most huge prompts without encoding anything.
    """
    if len(request.prompt_token_ids) > max_context_tokens:
        raise InvalidRequest(
            f"prompt_token_ids has {len(request.prompt_token_ids)} ids, more than the model context of "
            f"{max_context_tokens} tokens"
        )
    texts = [request.prompt_text, *(message.content for message in request.messages)]
    num_chars = sum(len(text) for text in texts)
    num_bytes = num_chars if num_chars > max_bytes else sum(len(text.encode("utf-8")) for text in texts)
    if num_bytes > max_bytes:
        raise InvalidRequest(
            f"prompt is {num_bytes} bytes or more; at most {max_bytes} bytes are accepted for a model context of "
            f"{max_context_tokens} tokens (checked before tokenizing)"
        )


def resolve_prompt(
    request: gateway_service_pb2.GenerateRequest, tokenizer: Tokenizer, vocab_size: int
) -> ResolvedPrompt:
    """Exactly one prompt form; raises InvalidRequest naming the field on any problem."""
    forms = [
        name
        for name, present in (
            ("prompt_text", bool(request.prompt_text)),
            ("prompt_token_ids", len(request.prompt_token_ids) > 0),
            ("messages", len(request.messages) > 0),
        )
        if present
    ]
    if len(forms) != 1:
        got = " and ".join(forms) if forms else "none (prompt_text, prompt_token_ids and messages are all empty)"
        raise InvalidRequest(f"exactly one of prompt_text, prompt_token_ids and messages must be set, got {got}")
    if request.prompt_text:
        prompt = _from_text(request.prompt_text, tokenizer)
        field = "prompt_text (tokenized)"
    elif request.messages:
        prompt = _from_messages(request.messages, tokenizer)
        field = "messages (rendered and tokenized)"
    else:
        prompt = ResolvedPrompt(list(request.prompt_token_ids), "")
        field = "prompt_token_ids"
    _check_range(prompt.token_ids, vocab_size, field)
    return prompt


def _from_text(text: str, tokenizer: Tokenizer) -> ResolvedPrompt:
    token_ids = tokenizer.encode(text, add_bos=True)
    if len(token_ids) <= len(tokenizer.encode("", add_bos=True)):  # nothing beyond the special tokens
        raise InvalidRequest(f"prompt_text {text[:40]!r} produced no tokens")
    return ResolvedPrompt(token_ids, text)


def _from_messages(messages, tokenizer: Tokenizer) -> ResolvedPrompt:
    if tokenizer.chat_template is None:
        raise InvalidRequest(
            f"the served model's tokenizer {tokenizer.name!r} has no chat template: send prompt_text instead of messages"
        )
    turns = []
    for index, message in enumerate(messages):
        role = _CHAT_ROLES.get(message.role)
        if role is None:
            raise InvalidRequest(f"messages[{index}].role must be SYSTEM, USER or ASSISTANT, got {message.role}")
        turns.append(ChatTurn(role, message.content))
    try:
        token_ids = tokenizer.encode_chat(turns)
    except ChatTemplateError as error:
        raise InvalidRequest(f"messages: {error}") from error
    if not token_ids:
        raise InvalidRequest("messages produced no tokens")
    return ResolvedPrompt(token_ids, "\n\n".join(turn.content for turn in turns))


def _check_range(token_ids: list[int], vocab_size: int, field: str) -> None:
    largest_id = max(token_ids)
    if largest_id >= vocab_size:
        index = token_ids.index(largest_id)
        raise InvalidRequest(f"{field}[{index}] = {largest_id} is out of range: valid ids are [0, {vocab_size})")
