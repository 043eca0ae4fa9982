"""The OpenAI-compatible HTTP API through the official `openai` SDK, against the fake engine.

The gateway runs for real (gRPC and HTTP servers on port 0); the engine and predictor are the fakes
of tests/gateway_fakes.py, so what is checked is the HTTP layer's own wire behaviour: bodies,
server-sent events, errors, and cancellation reaching the engine.
"""

from __future__ import annotations

import asyncio
import json
import socket

import grpc
import httpx2
import openai
import pytest

from services.common.contracts import common_pb2, engine_service_pb2
from tests.gateway_fakes import TOKENIZER, FakeEngine, expected_continuation, stack  # noqa: F401 (stack is a fixture)

pytestmark = pytest.mark.timeout(60)
PROMPT = "Say hello"


def _client(stack, timeout_s: float = 20.0) -> openai.AsyncOpenAI:
    """An SDK client on the stack's HTTP port, closed with the stack."""
    client = openai.AsyncOpenAI(
        base_url=f"{stack.handle.http_url}/v1", api_key="unused", max_retries=0, timeout=timeout_s
    )
    stack.cleanups.append(client.close)
    return client


def _continuation(stack) -> str:
    return expected_continuation(TOKENIZER.encode(PROMPT, add_bos=True), stack.engine.output_ids)


async def test_completion_returns_text_usage_and_finish_reason(stack):
    stack.engine.output_ids = TOKENIZER.encode("Hello 世界 🦜 done", add_bos=False)
    await stack.start()
    completion = await _client(stack).completions.create(model="fake-llama", prompt=PROMPT, max_tokens=30)
    (choice,) = completion.choices
    assert choice.text == _continuation(stack) and choice.finish_reason == "stop"
    assert completion.model == "fake-llama" and completion.object == "text_completion"
    assert completion.id.startswith("cmpl-req-")
    prompt_tokens = len(TOKENIZER.encode(PROMPT, add_bos=True))
    assert completion.usage.prompt_tokens == prompt_tokens
    assert completion.usage.completion_tokens == len(stack.engine.output_ids)
    assert completion.usage.total_tokens == prompt_tokens + len(stack.engine.output_ids)


async def test_streamed_completion_concatenates_to_the_full_text_and_reports_usage(stack):
    stack.engine.output_ids = TOKENIZER.encode("Hello 世界 🦜 naïve 𝔘𝔫𝔦 done", add_bos=False)
    await stack.start()
    stream = await _client(stack).completions.create(
        model="fake-llama", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    assert text == _continuation(stack)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(stack.engine.output_ids)
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert len({chunk.id for chunk in chunks}) == 1


async def test_stream_is_server_sent_events_ending_with_done(stack):
    await stack.start()
    body = {"prompt": PROMPT, "stream": True, "max_tokens": 8}
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=20) as client:
        response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in payloads[-1]  # only with stream_options.include_usage


async def test_chat_against_a_model_without_chat_template_is_a_clear_400(stack):
    await stack.start()
    with pytest.raises(openai.BadRequestError) as raised:
        await _client(stack).chat.completions.create(model="fake-llama", messages=[{"role": "user", "content": "hi"}])
    assert "has no chat template" in raised.value.message
    assert stack.engine.requests == []


async def test_sampling_fields_and_extensions_reach_the_engine(stack):
    await stack.start()
    await _client(stack).completions.create(
        model="",
        prompt=[1, 100, 200],
        max_tokens=7,
        temperature=0.0,
        top_p=0.5,
        seed=1234,
        stop=["x", "y"],
        extra_body={"top_k": 5, "ignore_eos": True, "priority": "batch", "expected_output_tokens": 9},
    )
    forwarded = stack.engine.requests[0]
    assert list(forwarded.prompt_token_ids) == [1, 100, 200]
    sampling = forwarded.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k) == (7, 0.0, 0.5, 5)
    assert sampling.seed == 1234 and sampling.ignore_eos
    assert forwarded.priority_class == common_pb2.PRIORITY_CLASS_BATCH
    assert forwarded.prediction.source == common_pb2.PREDICTION_SOURCE_CLIENT_HINT
    assert forwarded.prediction.mean_tokens == 7.0  # the hint of 9, clipped to max_tokens


async def test_stop_string_truncates_the_text_and_cancels_the_engine(stack):
    stack.engine.output_ids = TOKENIZER.encode("The answer is 42.\nEND of the text " * 3, add_bos=False)
    stack.engine.message_delay_s = 0.01
    await stack.start()
    stream = await _client(stack).completions.create(model="fake-llama", prompt=PROMPT, stop="END", stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == _continuation(stack).split("END")[0]
    assert chunks[-1].choices[0].finish_reason == "stop"
    await asyncio.wait_for(stack.engine.cancelled.wait(), timeout=5)


async def test_closing_a_stream_cancels_the_engine_call(stack):
    stack.engine.output_ids = [500] * 300
    stack.engine.message_delay_s = 0.02
    await stack.start()
    client = _client(stack)
    stream = await client.completions.create(model="fake-llama", prompt=PROMPT, max_tokens=50, stream=True)
    received = 0
    async for _ in stream:
        received += 1
        if received == 3:
            break
    await stream.close()
    await asyncio.wait_for(stack.engine.cancelled.wait(), timeout=5)
    assert len(stack.engine.requests) == 1


async def test_a_client_that_gives_up_on_a_non_streaming_request_cancels_the_engine_call(stack):
    stack.engine.output_ids = [500] * 300
    stack.engine.message_delay_s = 0.02
    await stack.start()
    client = _client(stack, timeout_s=0.3)
    with pytest.raises(openai.APITimeoutError):
        await client.completions.create(model="fake-llama", prompt=PROMPT, max_tokens=50)
    await asyncio.wait_for(stack.engine.cancelled.wait(), timeout=5)


@pytest.mark.parametrize(
    ("engine_code", "error_class", "status"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, openai.RateLimitError, 429),
        (grpc.StatusCode.UNAVAILABLE, openai.InternalServerError, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, openai.InternalServerError, 504),
    ],
)
async def test_engine_errors_have_their_http_status(stack, engine_code, error_class, status):
    stack.engine.abort_status = (engine_code, "engine says no")
    await stack.start()
    with pytest.raises(error_class) as raised:
        await _client(stack).completions.create(model="fake-llama", prompt=PROMPT)
    assert raised.value.status_code == status
    assert set(raised.value.body) == {"message", "type", "param", "code"}


class FailingMidStreamEngine(FakeEngine):
    """Streams two tokens, then fails the call (as a replica that dies mid-generation)."""

    async def Generate(self, request, context):  # noqa: N802
        self.requests.append(request)
        for token_id in self.output_ids[:2]:
            yield engine_service_pb2.EngineServiceGenerateResponse(token_ids=[token_id])
        await context.abort(grpc.StatusCode.INTERNAL, "engine crashed")


async def test_an_error_after_the_stream_started_is_an_error_event_without_done(stack):
    stack.engine = FailingMidStreamEngine()
    await stack.start()
    with pytest.raises(openai.APIError) as raised:
        stream = await _client(stack).completions.create(model="", prompt=PROMPT, stream=True)
        async for _ in stream:
            pass
    assert "engine crashed" in raised.value.message
    body = {"prompt": PROMPT, "stream": True}
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=20) as client:
        response = await client.post("/v1/completions", json=body)
    events = [event for event in response.text.split("\n\n") if event]
    assert response.status_code == 200 and "data: [DONE]" not in events
    assert json.loads(events[-1].removeprefix("data: "))["error"]["type"] == "internal_server_error"


async def test_engine_down_is_503_on_generation_and_models(stack):
    await stack.start(engine_up=False)
    client = _client(stack)
    with pytest.raises(openai.InternalServerError) as raised:
        await client.completions.create(model="", prompt=PROMPT)
    assert raised.value.status_code == 503 and "engine unavailable" in raised.value.message
    with pytest.raises(openai.InternalServerError):
        await client.models.list()


async def test_http_socket_is_tcp_so_asyncio_turns_nagle_off(stack):
    """A listening socket without proto=IPPROTO_TCP makes every response wait ~40 ms (see server._bind)."""
    await stack.start()
    assert stack.handle.http.sock.proto == socket.IPPROTO_TCP


async def test_models_lists_the_served_model_and_health_is_open(stack):
    await stack.start()
    client = _client(stack)
    (model,) = (await client.models.list()).data
    assert (model.id, model.owned_by) == ("fake-llama", "alise")
    assert (await client.models.retrieve("fake-llama")).id == "fake-llama"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-4")
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=10) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}


async def test_metrics_route_serves_the_given_registry(stack):
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from services.gateway import app
    from services.gateway.config import GatewayConfig
    from tests.gateway_fakes import start_fake_engine

    engine_server = await start_fake_engine(stack.engine)
    stack.cleanups.append(lambda: engine_server.stop(0))
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("alise_test_requests", "a test counter", registry=registry).inc(3)
    handle = await app.start(GatewayConfig(engine_address=engine_server.address, port=0), metrics_registry=registry)
    stack.cleanups.append(lambda: handle.stop(0))
    async with httpx2.AsyncClient(base_url=handle.http_url, timeout=10) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["alise_test_requests"].samples[0].value == 3.0


# ----------------------------------------------------------------------------- chat

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _chat_tokenizer_dir(directory) -> str:
    """A tiny word-level tokenizer.json with a chat template: the gateway's chat path without a real model."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>", "hi", "there", "friend", "be", "brief", "good", "day"]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<|system|>", "<|user|>", "<|assistant|>"])
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return str(directory)


async def test_chat_messages_are_rendered_with_the_chat_template(stack, tmp_path):
    from services.common.chat_template import ChatRole, ChatTurn
    from services.common.tokenizer import load_tokenizer

    tokenizer_spec = _chat_tokenizer_dir(tmp_path)
    tokenizer = load_tokenizer(tokenizer_spec)
    stack.engine.output_ids = tokenizer.encode("good day friend", add_bos=False)
    await stack.start(tokenizer=tokenizer_spec)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    client = _client(stack)
    completion = await client.chat.completions.create(model="fake-llama", messages=messages, max_tokens=10)
    prompt_ids = tokenizer.encode_chat([ChatTurn(ChatRole.SYSTEM, "be brief"), ChatTurn(ChatRole.USER, "hi there")])
    assert list(stack.engine.requests[0].prompt_token_ids) == prompt_ids
    expected = tokenizer.decode(prompt_ids + stack.engine.output_ids)[len(tokenizer.decode(prompt_ids)) :]
    (choice,) = completion.choices
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason == "stop" and completion.object == "chat.completion"
    assert completion.usage.prompt_tokens == len(prompt_ids)

    stream = await client.chat.completions.create(model="fake-llama", messages=messages, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
