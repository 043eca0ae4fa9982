"""OpenAI request bodies -> `alise.v1.GenerateRequest`, the one request type the pipeline runs.

Only the translation lives here: which OpenAI field fills which protobuf field, and a 400 for the
OpenAI features alise does not implement. Every value rule (temperature >= 0, stop string limits,
the context room...) is left to services/gateway/validation.py, shared with the gRPC API.

    prompt (str | [str])          -> prompt_text          prompt ([int] | [[int]]) -> prompt_token_ids
    messages                      -> messages (rendered with the chat template by validation)
    max_completion_tokens | max_tokens -> sampling.max_tokens
    temperature top_p top_k seed ignore_eos min_tokens speculative -> sampling.*       stop (str | [str]) -> sampling.stop
    priority ("interactive" | "standard" | "batch" | number) -> priority_class
    expected_output_tokens request_id -> the same fields
"""

from __future__ import annotations

from typing import Any

from services.common.contracts import common_pb2, gateway_service_pb2
from services.gateway.http.errors import invalid_parameter
from services.gateway.http.schemas import ChatCompletionBody, ChatMessageBody, CompletionBody, SamplingBody

PRIORITY_CLASSES = {
    "interactive": common_pb2.PRIORITY_CLASS_INTERACTIVE,
    "standard": common_pb2.PRIORITY_CLASS_STANDARD,
    "batch": common_pb2.PRIORITY_CLASS_BATCH,
}
CHAT_ROLES = {
    "system": common_pb2.CHAT_ROLE_SYSTEM,
    "developer": common_pb2.CHAT_ROLE_SYSTEM,  # OpenAI's newer name of the system role
    "user": common_pb2.CHAT_ROLE_USER,
    "assistant": common_pb2.CHAT_ROLE_ASSISTANT,
}


def completion_request(body: CompletionBody) -> gateway_service_pb2.GenerateRequest:
    """The GenerateRequest of a /v1/completions body; HttpApiError (400) for what alise lacks."""
    _refuse_unsupported_common(body)
    _refuse_if(body.logprobs is not None, "logprobs are not supported", "logprobs")
    _refuse_if(bool(body.echo), "echo is not supported", "echo")
    _refuse_if(bool(body.suffix), "suffix is not supported", "suffix")
    _refuse_if(body.best_of not in (None, 1), f"best_of must be 1, got {body.best_of}", "best_of")
    request = _base_request(body, body.max_tokens)
    _set_prompt(request, body.prompt)
    return request


def chat_request(body: ChatCompletionBody) -> gateway_service_pb2.GenerateRequest:
    """The GenerateRequest of a /v1/chat/completions body; HttpApiError (400) for what alise lacks."""
    _refuse_unsupported_common(body)
    _refuse_if(bool(body.logprobs) or body.top_logprobs is not None, "logprobs are not supported", "logprobs")
    _refuse_if(bool(body.tools), "tools are not supported", "tools")
    _refuse_if(body.tool_choice not in (None, "none"), "tool_choice is not supported", "tool_choice")
    response_type = (body.response_format or {}).get("type", "text")
    _refuse_if(response_type != "text", f"response_format {response_type!r} is not supported", "response_format")
    _refuse_if(not body.messages, "messages must hold at least one message", "messages")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    request = _base_request(body, max_tokens)
    for index, message in enumerate(body.messages):
        request.messages.append(_chat_message(index, message))
    return request


def _refuse_unsupported_common(body: SamplingBody) -> None:
    _refuse_if(body.n not in (None, 1), f"n must be 1 (one choice per request), got {body.n}", "n")
    _refuse_if(bool(body.presence_penalty), "presence_penalty is not supported (only 0)", "presence_penalty")
    _refuse_if(bool(body.frequency_penalty), "frequency_penalty is not supported (only 0)", "frequency_penalty")
    _refuse_if(bool(body.logit_bias), "logit_bias is not supported", "logit_bias")
    _refuse_if(
        body.stream_options is not None and not body.stream,
        "stream_options is only allowed when stream is true",
        "stream_options",
    )


def _refuse_if(condition: bool, message: str, param: str) -> None:
    if condition:
        raise invalid_parameter(message, param)


def _base_request(body: SamplingBody, max_tokens: int | None) -> gateway_service_pb2.GenerateRequest:
    """Everything but the prompt; unset body fields stay unset so validation applies its defaults."""
    request = gateway_service_pb2.GenerateRequest()
    sampling = request.sampling
    _assign(sampling, "max_tokens", max_tokens, "max_tokens")
    _assign(sampling, "temperature", body.temperature, "temperature")
    _assign(sampling, "top_p", body.top_p, "top_p")
    _assign(sampling, "top_k", body.top_k, "top_k")
    _assign(sampling, "seed", body.seed, "seed")
    _assign(sampling, "min_tokens", body.min_tokens, "min_tokens")
    _assign(sampling, "speculative", body.speculative, "speculative")
    sampling.ignore_eos = body.ignore_eos
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    sampling.stop.extend(stop)
    _assign(request, "request_id", body.request_id, "request_id")
    _assign(request, "expected_output_tokens", body.expected_output_tokens, "expected_output_tokens")
    if body.priority is not None:
        _assign(request, "priority_class", _priority_class(body.priority), "priority")
    return request


def _assign(message: Any, field: str, value: Any, param: str) -> None:
    """Sets a protobuf field when the body set it; a value its wire type cannot hold is a 400."""
    if value is None:
        return
    try:
        setattr(message, field, value)
    except (ValueError, TypeError, OverflowError):
        raise invalid_parameter(f"{param} is out of range: {value!r}", param) from None


def _priority_class(priority: int | str) -> int:
    if isinstance(priority, int):
        return priority  # a PriorityClass number; validation refuses unknown ones
    try:
        return PRIORITY_CLASSES[priority.lower()]
    except KeyError:
        names = ", ".join(PRIORITY_CLASSES)
        raise invalid_parameter(f"priority must be one of {names}, got {priority!r}", "priority") from None


def _set_prompt(request: gateway_service_pb2.GenerateRequest, prompt: Any) -> None:
    """One prompt, text or token ids; a list of several prompts (batched completions) is a 400."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        _refuse_if(len(prompt) != 1, f"prompt must hold one prompt, got {len(prompt)}", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        request.prompt_text = prompt
        return
    for index, token_id in enumerate(prompt):
        if token_id < 0:
            raise invalid_parameter(f"prompt[{index}] = {token_id} is not a token id (>= 0)", "prompt")
    try:
        request.prompt_token_ids.extend(prompt)
    except (ValueError, TypeError):
        raise invalid_parameter("prompt token ids must be in [0, 2**32)", "prompt") from None


def _chat_message(index: int, message: ChatMessageBody) -> common_pb2.ChatMessage:
    role = CHAT_ROLES.get(message.role)
    if role is None:
        roles = ", ".join(CHAT_ROLES)
        raise invalid_parameter(f"messages[{index}].role must be one of {roles}, got {message.role!r}", "messages")
    content = message.content
    if isinstance(content, list):
        for part in content:
            if part.type != "text" or part.text is None:
                raise invalid_parameter(
                    f"messages[{index}].content: only text parts are supported, got {part.type!r}", "messages"
                )
        content = "\n".join(part.text or "" for part in content)
    return common_pb2.ChatMessage(role=role, content=content or "")
