"""Turns a client's GenerateRequest into a fully resolved, validated domain request.

Pure functions (no I/O, no clock, no global random state: ids and seeds come from callables the
caller passes), so every rule here is unit-testable. Every rejection is an InvalidRequest whose
message names the field and the offending value, e.g. "sampling.top_p must be in (0, 1], got 1.5".

Resolution fills what the client left unset, so the engine always receives every field:

    temperature 1.0 | top_p 1.0 | top_k 0 (disabled) | seed drawn fresh | min_tokens 0 (no minimum) |
    max_tokens = min(default_max_tokens, max_context_tokens - num_prompt_tokens)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from services.common.contracts import common_pb2, gateway_service_pb2
from services.common.errors import InvalidRequest
from services.common.tokenizer import Tokenizer
from services.gateway.model_info import ModelInfo
from services.gateway.prompt_input import check_prompt_size, resolve_prompt

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
TOP_K_DISABLED = 0
MAX_SEED = 2**64 - 1  # seeds are uint64 on the wire
_PRIORITY_CLASS_VALUES = frozenset(common_pb2.PriorityClass.values())


@dataclass(frozen=True)
class RequestLimits:
    """The gateway's per-request limits (a slice of GatewayConfig)."""

    default_max_tokens: int  # max_tokens when unset, before clipping to the context room
    max_stop_strings: int  # most stop strings per request
    max_stop_string_chars: int  # longest stop string, in characters
    max_request_id_chars: int  # longest client request_id, in characters
    # prompt bytes accepted per context token, checked before tokenizing (a token of text is ~4 bytes;
    # long whitespace or digit runs make more, so twice the usual 8x margin)
    max_prompt_bytes_per_token: int = 16


@dataclass(frozen=True)
class ResolvedSampling:
    """SamplingParams with every default applied; all values already validated."""

    max_tokens: int  # > 0, and num_prompt_tokens + max_tokens <= max_context_tokens
    temperature: float  # >= 0, finite; 0 = greedy
    top_p: float  # in (0, 1]
    top_k: int  # >= 0; 0 = disabled
    seed: int  # in [0, 2**64)
    stop_strings: tuple[str, ...]  # non-empty strings, each at most max_stop_string_chars
    ignore_eos: bool  # keep generating past EOS until max_tokens
    min_tokens: int = 0  # in [0, max_tokens]: EOS, stop token ids and stop strings wait for this many tokens
    speculative: bool = True  # False opts out of speculative decoding (unset = allowed)


@dataclass(frozen=True)
class ResolvedRequest:
    """A validated generation request, ready to predict for and forward to an engine."""

    request_id: str  # the client's id, or a generated one when the client sent none
    prompt_token_ids: list[int]  # non-empty, all < vocab_size (special tokens included for text and chat)
    prompt_text: str  # the client's text, the chat messages' contents, or "" for token ids
    sampling: ResolvedSampling  # resolved sampling parameters
    priority_class: int  # a common_pb2.PriorityClass value, never UNSPECIFIED
    expected_output_tokens: int | None  # client's output-length hint (> 0), None when absent


def resolve_generate_request(
    request: gateway_service_pb2.GenerateRequest,
    model: ModelInfo,
    tokenizer: Tokenizer,
    limits: RequestLimits,
    *,
    new_request_id: Callable[[], str],
    draw_seed: Callable[[], int],
) -> ResolvedRequest:
    """Validates `request` against the model and limits; raises InvalidRequest on the first problem.

    Cheap checks run before tokenization, so a malformed request never pays for tokenizing.
    """
    request_id = _resolve_request_id(request.request_id, limits, new_request_id)
    sampling = request.sampling
    _check_sampling_values(sampling)
    stop_strings = _check_stop_strings(sampling.stop, limits)
    priority_class = _resolve_priority_class(request.priority_class)
    hint = _resolve_output_hint(request)
    check_prompt_size(request, model.max_context_tokens, model.max_context_tokens * limits.max_prompt_bytes_per_token)
    prompt = resolve_prompt(request, tokenizer, model.vocab_size)
    max_tokens = _resolve_max_tokens(sampling, len(prompt.token_ids), model.max_context_tokens, limits)
    _check_min_tokens(sampling.min_tokens, max_tokens)
    resolved_sampling = ResolvedSampling(
        max_tokens=max_tokens,
        temperature=sampling.temperature if sampling.HasField("temperature") else DEFAULT_TEMPERATURE,
        top_p=sampling.top_p if sampling.HasField("top_p") else DEFAULT_TOP_P,
        top_k=sampling.top_k,
        seed=sampling.seed if sampling.HasField("seed") else draw_seed(),
        stop_strings=stop_strings,
        ignore_eos=sampling.ignore_eos,
        min_tokens=sampling.min_tokens,
        speculative=sampling.speculative if sampling.HasField("speculative") else True,
    )
    return ResolvedRequest(
        request_id=request_id,
        prompt_token_ids=prompt.token_ids,
        prompt_text=prompt.text,
        sampling=resolved_sampling,
        priority_class=priority_class,
        expected_output_tokens=hint,
    )


def _resolve_request_id(request_id: str, limits: RequestLimits, new_request_id: Callable[[], str]) -> str:
    if len(request_id) > limits.max_request_id_chars:
        raise InvalidRequest(
            f"request_id must be at most {limits.max_request_id_chars} characters, got {len(request_id)}"
        )
    return request_id or new_request_id()


def _check_sampling_values(sampling: common_pb2.SamplingParams) -> None:
    """Range checks of the numeric sampling fields (max_tokens is checked with the prompt length)."""
    if sampling.HasField("temperature"):
        temperature = sampling.temperature
        if not math.isfinite(temperature) or temperature < 0:
            raise InvalidRequest(f"sampling.temperature must be finite and >= 0, got {temperature}")
    if sampling.HasField("top_p"):
        top_p = sampling.top_p
        if math.isnan(top_p) or not 0 < top_p <= 1:
            raise InvalidRequest(f"sampling.top_p must be in (0, 1], got {top_p}")
    if sampling.top_k < 0:
        raise InvalidRequest(f"sampling.top_k must be >= 0 (0 disables it), got {sampling.top_k}")
    if sampling.HasField("max_tokens") and sampling.max_tokens <= 0:
        raise InvalidRequest(f"sampling.max_tokens must be > 0 when set, got {sampling.max_tokens}")
    if sampling.min_tokens < 0:
        raise InvalidRequest(f"sampling.min_tokens must be >= 0, got {sampling.min_tokens}")


def _check_min_tokens(min_tokens: int, max_tokens: int) -> None:
    """min_tokens may not exceed the resolved max_tokens (the default one too, clipped to the context)."""
    if min_tokens > max_tokens:
        raise InvalidRequest(f"sampling.min_tokens ({min_tokens}) must be <= max_tokens ({max_tokens})")


def _check_stop_strings(stop: Sequence[str], limits: RequestLimits) -> tuple[str, ...]:
    if len(stop) > limits.max_stop_strings:
        raise InvalidRequest(f"sampling.stop may hold at most {limits.max_stop_strings} strings, got {len(stop)}")
    for index, stop_string in enumerate(stop):
        if not stop_string:
            raise InvalidRequest(f"sampling.stop[{index}] is empty; stop strings must be non-empty")
        if len(stop_string) > limits.max_stop_string_chars:
            raise InvalidRequest(
                f"sampling.stop[{index}] must be at most {limits.max_stop_string_chars} characters, "
                f"got {len(stop_string)}"
            )
    return tuple(stop)


def _resolve_priority_class(priority_class: int) -> int:
    if priority_class not in _PRIORITY_CLASS_VALUES:
        raise InvalidRequest(f"priority_class {priority_class} is not a known PriorityClass value")
    if priority_class == common_pb2.PRIORITY_CLASS_UNSPECIFIED:
        return common_pb2.PRIORITY_CLASS_STANDARD
    return priority_class


def _resolve_output_hint(request: gateway_service_pb2.GenerateRequest) -> int | None:
    if not request.HasField("expected_output_tokens"):
        return None
    if request.expected_output_tokens == 0:
        raise InvalidRequest("expected_output_tokens must be > 0 when set, got 0")
    return request.expected_output_tokens


def _resolve_max_tokens(
    sampling: common_pb2.SamplingParams,
    num_prompt_tokens: int,
    max_context_tokens: int,
    limits: RequestLimits,
) -> int:
    """Room check: the prompt must leave room for at least one output token."""
    room_tokens = max_context_tokens - num_prompt_tokens
    if room_tokens <= 0:
        raise InvalidRequest(
            f"prompt has {num_prompt_tokens} tokens, which fills the model context of "
            f"{max_context_tokens} tokens; no room is left for output"
        )
    if not sampling.HasField("max_tokens"):
        return min(limits.default_max_tokens, room_tokens)
    if sampling.max_tokens > room_tokens:
        raise InvalidRequest(
            f"prompt ({num_prompt_tokens} tokens) + sampling.max_tokens ({sampling.max_tokens}) "
            f"exceeds the model context of {max_context_tokens} tokens"
        )
    return sampling.max_tokens
