"""The OpenAI request bodies alise accepts, as pydantic models (shape only; values are checked later).

Only the body's shape is checked here (types, required fields). Value rules (ranges, limits, the
context room) belong to services/gateway/validation.py, which the gRPC API shares, so a bad value
gets the same verdict and message through both APIs. Fields OpenAI defines but alise does not
implement are declared so that a non-default value is refused with a 400 naming it (see
translate.py) instead of being silently ignored; fields no one defines are ignored, as vLLM does.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class StreamOptions(BaseModel):
    """`stream_options`: only include_usage exists."""

    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False  # send a last chunk with `usage` and no choices


class SamplingBody(BaseModel):
    """Fields /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None  # must name the served model; empty or absent = the served model
    max_tokens: int | None = None  # output tokens at most; unset = the gateway's default
    temperature: float | None = None  # 0 = greedy; unset = 1.0
    top_p: float | None = None  # nucleus mass in (0, 1]; unset = 1.0
    seed: int | None = None  # the request's sampling seed, in [0, 2**64); unset = drawn
    stop: str | list[str] | None = None  # stop strings (not returned)
    n: int | None = None  # choices per request: only 1
    stream: bool = False  # server-sent events instead of one JSON body
    stream_options: StreamOptions | None = None  # only with stream
    presence_penalty: float | None = None  # not implemented: only 0
    frequency_penalty: float | None = None  # not implemented: only 0
    logit_bias: dict[str, float] | None = None  # not implemented: only empty
    user: str | None = None  # accepted and ignored (end-user id for abuse tracking)
    # vLLM's extra body fields
    top_k: int | None = None  # keep the k most likely tokens; 0 disables
    ignore_eos: bool = False  # generate past EOS until max_tokens
    min_tokens: int | None = None  # no EOS / stop token / stop string before this many tokens; 0 = none
    speculative: bool | None = None  # false opts out of speculative decoding on an engine that runs it
    # alise's own
    priority: int | str | None = None  # a PriorityClass: "interactive" | "standard" | "batch" (or its number)
    expected_output_tokens: int | None = None  # client's output-length hint, tokens
    request_id: str | None = None  # client's id; the response `id` is built from it
    timeout: float | None = None  # this request's deadline in seconds, > 0; unset = --http-request-timeout-s


class CompletionBody(SamplingBody):
    """POST /v1/completions."""

    prompt: str | list[int] | list[str] | list[list[int]]  # one prompt: text or token ids
    logprobs: int | None = None  # not implemented
    echo: bool | None = None  # not implemented: only false
    suffix: str | None = None  # not implemented
    best_of: int | None = None  # not implemented: only 1


class ContentPart(BaseModel):
    """One part of a message's content; only text parts are supported."""

    model_config = ConfigDict(extra="ignore")
    type: str  # "text" (anything else is refused)
    text: str | None = None  # the text of a "text" part


class ChatMessageBody(BaseModel):
    """One message of `messages`."""

    model_config = ConfigDict(extra="ignore")
    role: str  # system | developer | user | assistant
    content: str | list[ContentPart] | None = None  # text, or a list of text parts
    name: str | None = None  # accepted and ignored


class ChatCompletionBody(SamplingBody):
    """POST /v1/chat/completions."""

    messages: list[ChatMessageBody]  # the conversation, rendered with the model's chat template
    max_completion_tokens: int | None = None  # the newer name of max_tokens (wins when both are set)
    logprobs: bool | None = None  # not implemented: only false
    top_logprobs: int | None = None  # not implemented
    tools: list[Any] | None = None  # not implemented
    tool_choice: Any | None = None  # not implemented
    response_format: dict[str, Any] | None = None  # only {"type": "text"}
