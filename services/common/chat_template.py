"""Chat messages -> prompt text, with the model's own Jinja chat template.

The template is the one shipped with the model (tokenizer_config.json "chat_template" or
chat_template.jinja). It runs in Jinja's immutable sandbox, as Hugging Face does, because a model
directory is data, not code. The rendered text contains the model's special tokens as text
(e.g. "<|im_start|>"), so it must be encoded without adding special tokens again.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import jinja2


class ChatRole(enum.Enum):
    """Author of a chat message; the value is the role text the templates expect."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


@dataclass(frozen=True)
class ChatTurn:
    """One message of a conversation."""

    role: ChatRole  # who wrote it
    content: str  # what was written


class ChatTemplateError(ValueError):
    """The template rejected the conversation (e.g. roles out of order) or failed to render."""


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise_from_template
    return environment.from_string(template)


def _raise_from_template(message: str) -> None:
    raise ChatTemplateError(message)


def render_chat(
    template: str,
    turns: Sequence[ChatTurn],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for `turns`, ending with the assistant's turn opened when asked."""
    import jinja2

    messages = [{"role": turn.role.value, "content": turn.content} for turn in turns]
    try:
        return _compile(template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except jinja2.TemplateError as error:
        raise ChatTemplateError(f"chat template failed: {error}") from error
