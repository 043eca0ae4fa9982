"""HTTP verdicts: every bad input of the gRPC validation matrix, OpenAI-only checks, and chat.

The matrix is tests/test_gateway_invalid_requests.py's INVALID_REQUESTS: each GenerateRequest is written as
the OpenAI body that means the same (a completion, or a chat for `messages`), sent through HTTP
and through gRPC, and both must refuse it with the same message (HTTP 400 = INVALID_ARGUMENT)
before anything reaches the engine. New matrix cases are covered without a change here.
"""

from __future__ import annotations

import json

import grpc
import httpx2
import pytest
from google.protobuf import json_format

from services.common.contracts import common_pb2, gateway_service_pb2
from tests.gateway_fakes import collect, stack  # noqa: F401 (stack is a fixture)
from tests.test_gateway_invalid_requests import INVALID_REQUESTS

pytestmark = pytest.mark.timeout(60)
# Matrix cases no OpenAI body can express, and why.
NOT_EXPRESSIBLE = {
    "both_prompts": "a completions body has one `prompt` field: text and ids cannot both be set",
    "text_and_messages": "a body is either a completion (prompt) or a chat (messages)",
}
CHAT_ROLES = {
    common_pb2.CHAT_ROLE_SYSTEM: "system",
    common_pb2.CHAT_ROLE_USER: "user",
    common_pb2.CHAT_ROLE_ASSISTANT: "assistant",
}


def openai_request(request: gateway_service_pb2.GenerateRequest) -> tuple[str, dict]:
    """The OpenAI endpoint and body meaning the same as a GenerateRequest."""
    if request.messages:
        messages = [{"role": CHAT_ROLES[m.role], "content": m.content} for m in request.messages]
        return "/v1/chat/completions", {"messages": messages, **_common_fields(request)}
    prompt = list(request.prompt_token_ids) or request.prompt_text
    return "/v1/completions", {"prompt": prompt, **_common_fields(request)}


def _common_fields(request: gateway_service_pb2.GenerateRequest) -> dict:
    body: dict = {}
    sampling = json_format.MessageToDict(request.sampling, preserving_proto_field_name=True)
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "min_tokens"):
        if name in sampling:
            body[name] = sampling[name]
    for name in ("temperature", "top_p"):  # MessageToDict writes NaN/Infinity as strings
        if isinstance(body.get(name), str):
            body[name] = float(body[name])
    if request.request_id:
        body["request_id"] = request.request_id
    if request.priority_class:
        body["priority"] = request.priority_class
    if request.HasField("expected_output_tokens"):
        body["expected_output_tokens"] = request.expected_output_tokens
    return body


async def _post(stack, path: str, body: dict | bytes, headers: dict | None = None) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # allows NaN, Infinity
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=30) as client:
        return await client.post(path, content=content, headers={"content-type": "application/json", **(headers or {})})


def test_every_matrix_case_is_covered():
    assert set(NOT_EXPRESSIBLE) <= set(INVALID_REQUESTS)


@pytest.mark.parametrize("case", sorted(set(INVALID_REQUESTS) - set(NOT_EXPRESSIBLE)))
async def test_matrix_case_gets_the_same_verdict_through_http_and_grpc(stack, case):
    request, expected_message = INVALID_REQUESTS[case]
    stub = await stack.start()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(stub.Generate(request, timeout=10))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    path, body = openai_request(request)
    response = await _post(stack, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] == raised.value.details() and expected_message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert stack.engine.requests == []


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"prompt": "hi", "n": 2}, 400, "n", "n must be 1"),
        ({"prompt": "hi", "logprobs": 2}, 400, "logprobs", "logprobs are not supported"),
        ({"prompt": "hi", "max_tokens": 4, "min_tokens": 5}, 400, "min_tokens", "must be <= max_tokens (4)"),
        ({"prompt": "hi", "best_of": 3}, 400, "best_of", "best_of must be 1"),
        ({"prompt": "hi", "presence_penalty": 0.5}, 400, "presence_penalty", "not supported"),
        ({"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options", "only allowed"),
        ({"prompt": ["a", "b"]}, 400, "prompt", "one prompt, got 2"),
        ({"prompt": [1, -5]}, 400, "prompt", "prompt[1] = -5"),
        ({"prompt": "hi", "seed": -1}, 400, "seed", "seed is out of range"),
        ({"prompt": "hi", "max_tokens": 2**40}, 400, "max_tokens", "out of range"),
        ({"prompt": "hi", "priority": "urgent"}, 400, "priority", "interactive, standard, batch"),
        ({"prompt": "hi", "temperature": "hot"}, 400, "temperature", "temperature"),
        ({"max_tokens": 3}, 400, "prompt", "prompt"),
        ({"prompt": "hi", "model": "gpt-4"}, 404, "model", "'gpt-4' does not exist"),
    ],
)
async def test_openai_only_checks(stack, body, status, param, message):
    await stack.start()
    response = await _post(stack, "/v1/completions", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"], error
    assert stack.engine.requests == []


async def test_malformed_json_unknown_route_and_oversized_body(stack):
    await stack.start(http_max_request_bytes=1000)
    response = await _post(stack, "/v1/completions", b"{not json")
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    response = await _post(stack, "/v1/embeddings", {"input": "x"})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    response = await _post(stack, "/v1/completions", {"prompt": "x" * 2000})
    assert response.status_code == 413 and "1000 bytes" in response.json()["error"]["message"]
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=10) as client:
        chunked = await client.post("/v1/completions", content=_chunks(b"y" * 1500))  # no Content-Length
    assert chunked.status_code == 413


async def _chunks(data: bytes):
    for start in range(0, len(data), 100):
        yield data[start : start + 100]
