"""GeneratedChunks -> OpenAI response bodies and server-sent events.

    non-streaming   {"id", "object": "text_completion" | "chat.completion", "created", "model",
                     "choices": [{"index": 0, "text" | "message", "finish_reason"}], "usage"}
    streaming       data: {"object": "text_completion" | "chat.completion.chunk", "choices": [delta]}
                    ... the last choice carries finish_reason; with stream_options.include_usage
                    every chunk has "usage": null and one more chunk has "choices": [] and usage
                    data: [DONE]

Bodies are built as dicts and encoded with json.dumps (no pydantic on the way out): this runs once
per streamed token, and it must stay far below the gRPC relay's own cost per message.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from services.gateway.finish import FinishReason
from services.gateway.generation import FinishSummary

SSE_DONE = b"data: [DONE]\n\n"
FINISH_REASONS = {
    FinishReason.EOS: "stop",
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.ABORTED: "abort",  # vLLM's word for it; OpenAI has none
}


class ApiKind(enum.Enum):
    """Which OpenAI endpoint a response belongs to."""

    COMPLETION = "completion"  # /v1/completions
    CHAT = "chat"  # /v1/chat/completions


_OBJECTS = {
    (ApiKind.COMPLETION, False): "text_completion",
    (ApiKind.COMPLETION, True): "text_completion",
    (ApiKind.CHAT, False): "chat.completion",
    (ApiKind.CHAT, True): "chat.completion.chunk",
}
_ID_PREFIXES = {ApiKind.COMPLETION: "cmpl-", ApiKind.CHAT: "chatcmpl-"}


@dataclass(frozen=True)
class ResponseHeader:
    """The fields every body and chunk of one response repeats."""

    kind: ApiKind  # completion or chat
    response_id: str  # "cmpl-<request id>" or "chatcmpl-<request id>"
    model: str  # the served model's name
    created_s: int  # Unix time the request arrived, seconds

    @classmethod
    def build(cls, kind: ApiKind, request_id: str, model: str, created_s: int) -> "ResponseHeader":
        return cls(kind, _ID_PREFIXES[kind] + request_id, model, created_s)


def usage_of(finish: FinishSummary) -> dict:
    """OpenAI's usage object."""
    prompt, completion = finish.num_prompt_tokens, finish.num_completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def full_response(header: ResponseHeader, text: str, finish: FinishSummary) -> dict:
    """The body of a non-streaming response."""
    choice: dict = {"index": 0}
    if header.kind is ApiKind.CHAT:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    choice["logprobs"] = None
    choice["finish_reason"] = FINISH_REASONS.get(finish.finish_reason, "stop")
    return {**_envelope(header, streaming=False), "choices": [choice], "usage": usage_of(finish)}


def delta_event(
    header: ResponseHeader, text: str, finish: FinishSummary | None, *, first: bool, include_usage: bool
) -> bytes:
    """One SSE event carrying a text delta (and the finish reason on the last one)."""
    choice: dict = {"index": 0}
    if header.kind is ApiKind.CHAT:
        choice["delta"] = {"role": "assistant", "content": text} if first else {"content": text}
    else:
        choice["text"] = text
    choice["logprobs"] = None
    choice["finish_reason"] = None if finish is None else FINISH_REASONS.get(finish.finish_reason, "stop")
    body = {**_envelope(header, streaming=True), "choices": [choice]}
    if include_usage:
        body["usage"] = None
    return encode_event(body)


def usage_event(header: ResponseHeader, finish: FinishSummary) -> bytes:
    """The extra last chunk of `stream_options.include_usage`: no choices, the usage."""
    return encode_event({**_envelope(header, streaming=True), "choices": [], "usage": usage_of(finish)})


def encode_event(body: dict) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    return b"data: " + json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _envelope(header: ResponseHeader, *, streaming: bool) -> dict:
    return {
        "id": header.response_id,
        "object": _OBJECTS[(header.kind, streaming)],
        "created": header.created_s,
        "model": header.model,
    }
