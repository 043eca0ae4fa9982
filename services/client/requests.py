"""Requests in, chunks out: keyword arguments -> GenerateRequest, GenerateResponse -> Chunk.

Unset keyword arguments stay unset on the wire, so the gateway applies its documented defaults
(temperature 1.0, max_tokens = its default clipped to the context room, ...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from services.common.contracts import common_pb2, gateway_service_pb2


class FinishReason(enum.Enum):
    """Why a generation ended."""

    EOS = common_pb2.FINISH_REASON_EOS  # the model's end-of-sequence token
    LENGTH = common_pb2.FINISH_REASON_LENGTH  # max_tokens or the context filled
    STOP = common_pb2.FINISH_REASON_STOP  # a stop string matched
    ABORTED = common_pb2.FINISH_REASON_ABORTED  # cancelled or aborted in the engine


_PRIORITIES = {
    "interactive": common_pb2.PRIORITY_CLASS_INTERACTIVE,
    "standard": common_pb2.PRIORITY_CLASS_STANDARD,
    "batch": common_pb2.PRIORITY_CLASS_BATCH,
}
_ROLES = {
    "system": common_pb2.CHAT_ROLE_SYSTEM,
    "user": common_pb2.CHAT_ROLE_USER,
    "assistant": common_pb2.CHAT_ROLE_ASSISTANT,
}


@dataclass(frozen=True)
class Chunk:
    """One message of a generation stream."""

    request_id: str  # the client's request id, or the one the gateway generated
    token_ids: tuple[int, ...]  # token ids generated since the previous chunk
    text: str  # text released since the previous chunk (may lag token_ids)
    finish_reason: FinishReason | None  # set on the last chunk only
    num_prompt_tokens: int | None  # last chunk only: prompt length in tokens
    num_completion_tokens: int | None  # last chunk only: tokens generated
    response: gateway_service_pb2.GenerateResponse  # the message as received (prediction, timings)

    @classmethod
    def from_response(cls, response: gateway_service_pb2.GenerateResponse) -> "Chunk":
        final = response.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
        return cls(
            request_id=response.request_id,
            token_ids=tuple(response.token_ids),
            text=response.text,
            finish_reason=FinishReason(response.finish_reason) if final else None,
            num_prompt_tokens=response.usage.prompt_tokens if final else None,
            num_completion_tokens=response.usage.completion_tokens if final else None,
            response=response,
        )


@dataclass(frozen=True)
class Completion:
    """A whole generation, collected."""

    request_id: str  # as in every chunk
    text: str  # all text
    token_ids: tuple[int, ...]  # all generated token ids
    finish_reason: FinishReason  # why it ended
    num_prompt_tokens: int  # prompt length in tokens
    num_completion_tokens: int  # tokens generated

    @classmethod
    def from_chunks(cls, chunks: Sequence[Chunk]) -> "Completion":
        last = chunks[-1]
        assert last.finish_reason is not None, "the stream ended without a final chunk"
        return cls(
            request_id=last.request_id,
            text="".join(chunk.text for chunk in chunks),
            token_ids=tuple(token_id for chunk in chunks for token_id in chunk.token_ids),
            finish_reason=last.finish_reason,
            num_prompt_tokens=last.num_prompt_tokens or 0,
            num_completion_tokens=last.num_completion_tokens or 0,
        )


def build_request(
    prompt: str | None = None,
    *,
    prompt_token_ids: Sequence[int] = (),
    messages: Iterable[Mapping[str, str]] = (),
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int = 0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    ignore_eos: bool = False,
    priority: str | None = None,
    expected_output_tokens: int | None = None,
    request_id: str = "",
) -> gateway_service_pb2.GenerateRequest:
    """A GenerateRequest from one prompt form: text, token ids, or chat messages ({"role", "content"})."""
    sampling = common_pb2.SamplingParams(top_k=top_k, stop=list(stop), ignore_eos=ignore_eos)
    for name, value in (("max_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p), ("seed", seed)):
        if value is not None:
            setattr(sampling, name, value)
    request = gateway_service_pb2.GenerateRequest(
        request_id=request_id, prompt_text=prompt or "", prompt_token_ids=list(prompt_token_ids), sampling=sampling
    )
    for message in messages:
        if message["role"] not in _ROLES:
            raise ValueError(f"role must be one of {sorted(_ROLES)}, got {message['role']!r}")
        request.messages.append(common_pb2.ChatMessage(role=_ROLES[message["role"]], content=message["content"]))
    if priority is not None:
        if priority not in _PRIORITIES:
            raise ValueError(f"priority must be one of {sorted(_PRIORITIES)}, got {priority!r}")
        request.priority_class = _PRIORITIES[priority]
    if expected_output_tokens is not None:
        request.expected_output_tokens = expected_output_tokens
    return request
