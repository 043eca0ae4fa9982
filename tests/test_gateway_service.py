"""GatewayService through real gRPC, against the fake engine and predictor servers of tests/gateway_fakes.py.

The fakes are tiny grpc.aio servicers on 127.0.0.1 port 0 (via services.common.server.start_server),
so these tests exercise the gateway's wire behaviour without depending on the real engine or
predictor code.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import grpc
import pytest

from services.common.contracts import common_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from tests.gateway_fakes import (  # noqa: F401 (stack is a fixture)
    ENGINE_TIMINGS,
    MAX_CONTEXT_TOKENS,
    TOKENIZER,
    VOCAB_SIZE,
    collect,
    expected_continuation,
    sampling_params,
    stack,
    start_fake_engine,
    text_request,
)

pytestmark = pytest.mark.timeout(60)


# ----------------------------------------------------------------------------- streaming


async def test_streamed_generation_relays_tokens_text_and_final_fields(stack):
    stack.engine.output_ids = TOKENIZER.encode("Hello 世界 🦜 naïve 𝔘𝔫𝔦 done", add_bos=False)
    stub = await stack.start()
    prompt_ids = TOKENIZER.encode("Say hello", add_bos=True)
    responses = await collect(stub.Generate(text_request(request_id="client-1"), timeout=10))

    assert len(responses) == len(stack.engine.output_ids) + 1
    assert all(r.request_id == "client-1" for r in responses)
    assert [i for r in responses for i in r.token_ids] == stack.engine.output_ids
    texts = [r.text for r in responses]
    assert "".join(texts) == expected_continuation(prompt_ids, stack.engine.output_ids)
    assert not any("\ufffd" in text for text in texts)
    assert all(r.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
    final = responses[-1]
    assert final.finish_reason == common_pb2.FINISH_REASON_EOS
    assert final.usage.prompt_tokens == len(prompt_ids)
    assert final.usage.completion_tokens == len(stack.engine.output_ids)
    assert final.timings == ENGINE_TIMINGS
    assert final.prediction.source == common_pb2.PREDICTION_SOURCE_FALLBACK


async def test_engine_receives_resolved_request_with_internal_id(stack):
    stub = await stack.start()
    await collect(stub.Generate(text_request(request_id="same"), timeout=10))
    await collect(stub.Generate(text_request(request_id="same"), timeout=10))

    first, second = stack.engine.requests
    assert first.request_id != second.request_id
    assert first.request_id != "same" and first.request_id.startswith("gw-")
    prompt_ids = TOKENIZER.encode("Say hello", add_bos=True)
    assert list(first.prompt_token_ids) == prompt_ids and prompt_ids[0] == TOKENIZER.bos_token_id
    sampling = first.sampling
    for name in ("max_tokens", "temperature", "top_p", "seed"):
        assert sampling.HasField(name), name
    assert sampling.max_tokens == min(256, MAX_CONTEXT_TOKENS - len(prompt_ids))
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (1.0, 1.0, 0)
    assert first.priority_class == common_pb2.PRIORITY_CLASS_STANDARD
    assert first.prediction.source == common_pb2.PREDICTION_SOURCE_FALLBACK
    assert first.prediction.mean_tokens == sampling.max_tokens  # the 256 prior clipped to max_tokens


async def test_client_sampling_and_priority_are_forwarded(stack):
    stub = await stack.start()
    sampling = sampling_params(max_tokens=7, temperature=0.0, top_p=0.5, top_k=5, seed=1234, ignore_eos=True)
    request = gateway_service_pb2.GenerateRequest(
        prompt_token_ids=[1, 100, 200], sampling=sampling, priority_class=common_pb2.PRIORITY_CLASS_BATCH
    )
    responses = await collect(stub.Generate(request, timeout=10))
    assert responses[-1].request_id.startswith("req-")  # generated when the client sent none
    forwarded = stack.engine.requests[0]
    assert list(forwarded.prompt_token_ids) == [1, 100, 200]
    assert (forwarded.sampling.max_tokens, forwarded.sampling.temperature) == (7, 0.0)
    assert (forwarded.sampling.top_p, forwarded.sampling.top_k) == (0.5, 5)
    assert forwarded.sampling.seed == 1234 and forwarded.sampling.ignore_eos
    assert forwarded.priority_class == common_pb2.PRIORITY_CLASS_BATCH


async def test_stop_string_truncates_text_and_cancels_engine(stack):
    stack.engine.output_ids = TOKENIZER.encode("The answer is 42.\nEND of the text " * 3, add_bos=False)
    stack.engine.message_delay_s = 0.01
    stub = await stack.start()
    request = text_request(sampling=sampling_params(stop=["END", "never"]))
    responses = await collect(stub.Generate(request, timeout=10))

    text = "".join(r.text for r in responses)
    prompt_ids = TOKENIZER.encode("Say hello", add_bos=True)
    assert text == expected_continuation(prompt_ids, stack.engine.output_ids).split("END")[0]
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    num_returned = sum(len(r.token_ids) for r in responses)
    assert responses[-1].usage.completion_tokens == num_returned < len(stack.engine.output_ids)
    assert responses[-1].timings.end_to_end_s > 0
    await asyncio.wait_for(stack.engine.cancelled.wait(), timeout=5)


async def test_stream_ending_without_final_message_is_reported(stack):
    stub = await stack.start()
    stack.engine.finish_reason = common_pb2.FINISH_REASON_UNSPECIFIED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(stub.Generate(text_request(), timeout=10))
    assert "without a finish reason" in raised.value.details()


async def test_get_model_info_comes_from_the_engine(stack):
    stub = await stack.start()
    info = await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=10)
    assert (info.model_name, info.max_context_tokens, info.vocab_size) == ("fake-llama", 64, VOCAB_SIZE)
    assert info.HasField("eos_token_id") and (info.eos_token_id, info.max_stop_strings) == (2, 16)


async def test_a_model_without_eos_is_reported_without_one_and_still_served(stack):
    stack.engine.eos_token_id = None
    stub = await stack.start()
    info = await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=10)
    assert not info.HasField("eos_token_id") and info.vocab_size == VOCAB_SIZE  # not 0, a real token id
    responses = await collect(stub.Generate(text_request(), timeout=10))
    assert [i for r in responses for i in r.token_ids] == stack.engine.output_ids


# ----------------------------------------------------------------------------- prediction


async def test_predictor_answer_is_used_and_forwarded(stack):
    stub = await stack.start(predictor="up")
    request = gateway_service_pb2.GenerateRequest(prompt_token_ids=TOKENIZER.encode("Tell me a story"))
    responses = await collect(stub.Generate(request, timeout=10))
    prediction = responses[-1].prediction
    assert prediction.source == common_pb2.PREDICTION_SOURCE_PREDICTOR
    assert (prediction.mean_tokens, prediction.model_version) == (42.0, "fake-v1")
    assert stack.engine.requests[0].prediction == prediction
    (asked,) = stack.predictor.requests[0].inputs
    assert asked.prompt_text == "Tell me a story"  # a token-id prompt is decoded for the predictor
    assert (asked.num_prompt_tokens, asked.served_model) == (len(request.prompt_token_ids), "fake-llama")


async def _timed_generation(stub, request) -> tuple[list[gateway_service_pb2.GenerateResponse], float]:
    await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=10)  # warm: model info
    started_s = time.monotonic()
    responses = await collect(stub.Generate(request, timeout=10))
    return responses, time.monotonic() - started_s


async def test_slow_predictor_falls_back_within_its_deadline(stack):
    stack.predictor.delay_s = 3.0
    stub = await stack.start(predictor="up", predictor_timeout_ms=50)
    responses, elapsed_s = await _timed_generation(stub, text_request())
    assert responses[-1].prediction.source == common_pb2.PREDICTION_SOURCE_FALLBACK
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_EOS
    assert elapsed_s < 0.05 + 0.5, f"generation took {elapsed_s:.3f} s with a 50 ms predictor deadline"
    assert stack.predictor.requests  # it was asked


async def test_slow_predictor_falls_back_to_the_client_hint(stack):
    stack.predictor.delay_s = 3.0
    stub = await stack.start(predictor="up", predictor_timeout_ms=50)
    responses, _ = await _timed_generation(stub, text_request(expected_output_tokens=17))
    assert responses[-1].prediction.source == common_pb2.PREDICTION_SOURCE_CLIENT_HINT
    assert responses[-1].prediction.mean_tokens == 17.0


async def test_predictor_down_falls_back(stack):
    stub = await stack.start(predictor="down")
    responses, elapsed_s = await _timed_generation(stub, text_request())
    assert responses[-1].prediction.source == common_pb2.PREDICTION_SOURCE_FALLBACK
    assert elapsed_s < 0.05 + 0.5


async def test_predictor_error_falls_back(stack):
    stack.predictor.abort_status = (grpc.StatusCode.UNAVAILABLE, "model not loaded")
    stub = await stack.start(predictor="up")
    responses = await collect(stub.Generate(text_request(), timeout=10))
    assert responses[-1].prediction.source == common_pb2.PREDICTION_SOURCE_FALLBACK


# ----------------------------------------------------------------------------- engine failures


async def test_engine_down_gives_unavailable_and_gateway_still_starts(stack):
    stub = await stack.start(engine_up=False)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(stub.Generate(text_request(), timeout=10))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "engine unavailable" in raised.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "engine unavailable" in raised.value.details()


async def test_gateway_recovers_when_the_engine_comes_up(stack):
    """Engine down at start, then served on the same port: model info is retried and succeeds."""
    stub = await stack.start(engine_up=False, model_info_retry_interval_s=0.05)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=10)
    # The gateway dialled the address stopped_server_address() returned; serve it now.
    engine_address = stack.engine_address
    engine_server = await start_fake_engine(stack.engine, port=int(engine_address.rsplit(":", 1)[1]))
    stack.cleanups.append(lambda: engine_server.stop(0))
    deadline_s = time.monotonic() + 10
    while True:
        try:
            info = await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=5)
            break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() < deadline_s, "gateway did not recover within 10 s"
            await asyncio.sleep(0.1)
    assert info.model_name == "fake-llama"
    responses = await collect(stub.Generate(text_request(), timeout=10))
    assert responses[-1].finish_reason == common_pb2.FINISH_REASON_EOS


@pytest.mark.parametrize(
    ("engine_code", "engine_message", "client_code", "client_message"),
    [
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt needs 99 KV blocks",
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt needs 99 KV blocks",
        ),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "waiting queue full",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "waiting queue full",
        ),
        (grpc.StatusCode.UNAVAILABLE, "draining", grpc.StatusCode.UNAVAILABLE, "engine unavailable"),
    ],
)
async def test_engine_errors_map_to_clear_statuses(stack, engine_code, engine_message, client_code, client_message):
    stack.engine.abort_status = (engine_code, engine_message)
    stub = await stack.start()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(stub.Generate(text_request(), timeout=10))
    assert raised.value.code() == client_code
    assert client_message in raised.value.details()


# ----------------------------------------------------------------------------- cancel and deadline


async def test_client_cancel_cancels_the_engine_call(stack):
    stack.engine.output_ids = [500] * 200
    stack.engine.message_delay_s = 0.02
    stub = await stack.start()
    call = stub.Generate(text_request(), timeout=30)
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            call.cancel()
            break
    await asyncio.wait_for(stack.engine.cancelled.wait(), timeout=5)
    assert stack.engine.cancelled.is_set() and received == 3


async def test_client_deadline_is_propagated_and_cancels_the_engine_call(stack):
    stack.engine.output_ids = [500] * 200
    stack.engine.message_delay_s = 0.02
    stub = await stack.start()
    await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(stub.Generate(text_request(), timeout=0.5))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    (engine_time_remaining_s,) = stack.engine.time_remaining_s
    # <= 0.5 s plus the wire format's rounding of timeouts
    assert engine_time_remaining_s is not None and 0 < engine_time_remaining_s <= 0.52
    await asyncio.wait_for(stack.engine.cancelled.wait(), timeout=5)


async def test_no_client_deadline_means_no_engine_deadline(stack):
    stub = await stack.start()
    await collect(stub.Generate(text_request()))
    assert stack.engine.time_remaining_s == [None]


# ----------------------------------------------------------------------------- entry point


async def test_main_module_serves_until_sigterm(stack):
    """`python -m services.gateway` announces READY host:port, answers, and exits 0 on SIGTERM."""
    engine_server = await start_fake_engine(stack.engine)
    stack.cleanups.append(lambda: engine_server.stop(0))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.gateway",
        "--engine-address",
        engine_server.address,
        "--port",
        "0",
        "--drain-seconds",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        assert line.startswith("READY alise.v1.GatewayService 127.0.0.1:"), line
        async with grpc.aio.insecure_channel(line.split()[-1]) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            info = await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=10)
        assert info.model_name == "fake-llama"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
