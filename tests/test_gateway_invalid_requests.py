"""The gateway's request validation through real gRPC: every malformed request gets INVALID_ARGUMENT with a
message naming the field, and never reaches the engine (fake engine and predictor of tests/gateway_fakes.py).
"""

from __future__ import annotations

import math

import grpc
import pytest

from services.common.contracts import common_pb2, gateway_service_pb2
from tests.gateway_fakes import (  # noqa: F401 (stack is a fixture)
    MAX_CONTEXT_TOKENS,
    VOCAB_SIZE,
    collect,
    sampling_params,
    stack,
    text_request,
)

pytestmark = pytest.mark.timeout(60)


INVALID_REQUESTS = {
    "neither_prompt": (gateway_service_pb2.GenerateRequest(), "got none"),
    "both_prompts": (
        gateway_service_pb2.GenerateRequest(prompt_text="hi", prompt_token_ids=[1, 2]),
        "got prompt_text and prompt_token_ids",
    ),
    "empty_text": (
        gateway_service_pb2.GenerateRequest(prompt_text="", sampling=sampling_params(max_tokens=4)),
        "prompt_text, prompt_token_ids and messages are all empty",
    ),
    "text_and_messages": (
        gateway_service_pb2.GenerateRequest(
            prompt_text="hi", messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="hi")]
        ),
        "got prompt_text and messages",
    ),
    "chat_without_a_chat_template": (
        gateway_service_pb2.GenerateRequest(
            messages=[common_pb2.ChatMessage(role=common_pb2.CHAT_ROLE_USER, content="hi")]
        ),
        "has no chat template: send prompt_text instead of messages",
    ),
    "token_id_out_of_vocab": (
        gateway_service_pb2.GenerateRequest(prompt_token_ids=[1, VOCAB_SIZE]),
        f"prompt_token_ids[1] = {VOCAB_SIZE} is out of range",
    ),
    "prompt_plus_max_tokens_over_context": (
        gateway_service_pb2.GenerateRequest(prompt_token_ids=[5] * 60, sampling=sampling_params(max_tokens=5)),
        "sampling.max_tokens (5) exceeds the model context of 64",
    ),
    "prompt_fills_context": (
        gateway_service_pb2.GenerateRequest(prompt_token_ids=[5] * MAX_CONTEXT_TOKENS),
        "prompt has 64 tokens, which fills the model context",
    ),
    "text_prompt_over_context": (text_request("word " * 100), "fills the model context"),
    "huge_text_prompt_refused_before_tokenizing": (text_request("word " * 5000), "checked before tokenizing"),
    "max_tokens_zero": (text_request(sampling=sampling_params(max_tokens=0)), "sampling.max_tokens must be > 0"),
    "max_tokens_negative": (text_request(sampling=sampling_params(max_tokens=-3)), "got -3"),
    "temperature_negative": (text_request(sampling=sampling_params(temperature=-0.5)), "sampling.temperature"),
    "temperature_nan": (text_request(sampling=sampling_params(temperature=math.nan)), "got nan"),
    "temperature_inf": (text_request(sampling=sampling_params(temperature=math.inf)), "got inf"),
    "top_p_nan": (text_request(sampling=sampling_params(top_p=math.nan)), "sampling.top_p must be in (0, 1]"),
    "top_p_zero": (text_request(sampling=sampling_params(top_p=0.0)), "sampling.top_p must be in (0, 1], got 0"),
    "top_p_above_one": (text_request(sampling=sampling_params(top_p=1.5)), "got 1.5"),
    "top_k_negative": (text_request(sampling=sampling_params(top_k=-1)), "sampling.top_k must be >= 0"),
    "too_many_stop_strings": (
        text_request(sampling=sampling_params(stop=[f"s{i}" for i in range(17)])),
        "at most 16 strings, got 17",
    ),
    "empty_stop_string": (text_request(sampling=sampling_params(stop=["ok", ""])), "sampling.stop[1] is empty"),
    "overlong_stop_string": (
        text_request(sampling=sampling_params(stop=["x" * 257])),
        "sampling.stop[0] must be at most 256 characters, got 257",
    ),
    "request_id_too_long": (text_request(request_id="r" * 129), "request_id must be at most 128"),
    "unknown_priority_class": (text_request(priority_class=99), "priority_class 99"),
    "zero_output_hint": (text_request(expected_output_tokens=0), "expected_output_tokens must be > 0"),
}


@pytest.mark.parametrize("case", sorted(INVALID_REQUESTS))
async def test_invalid_request_is_rejected_before_the_engine(stack, case):
    request, expected_message = INVALID_REQUESTS[case]
    stub = await stack.start()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(stub.Generate(request, timeout=10))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected_message in raised.value.details()
    assert stack.engine.requests == []
