"""The gateway's in-flight limit on request bytes: streams held on a slow fake engine fill it, the next
request is refused at once (RESOURCE_EXHAUSTED, QUEUE_FULL, naming the flag), a smaller one still
fits, and the bytes come back when the streams end."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.refusal import RefusalReason, refusal_reason_of
from tests.gateway_fakes import sampling_params, stack, text_request  # noqa: F401

pytestmark = pytest.mark.timeout(60)


async def _first_token(call) -> None:
    async for message in call:
        if message.token_ids:
            return


async def test_request_bytes_in_flight_are_bounded_and_given_back(stack):
    stack.engine.output_ids = [500] * 50
    stack.engine.message_delay_s = 0.05  # ~2.5 s per stream: they stay in flight
    big = text_request("hello " * 20, sampling=sampling_params(max_tokens=16))  # ~130 request bytes
    limit = 2 * big.ByteSize() + 20  # room for two
    stub = await stack.start(max_in_flight_request_bytes=limit)
    held = [stub.Generate(big, timeout=30) for _ in range(2)]
    await asyncio.gather(*(_first_token(call) for call in held))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _first_token(stub.Generate(big, timeout=30))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-in-flight-request-bytes" in refused.value.details()
    assert refusal_reason_of(refused.value.trailing_metadata()) is RefusalReason.QUEUE_FULL
    small = text_request("hi", sampling=sampling_params(max_tokens=2))
    await _first_token(stub.Generate(small, timeout=30))  # a small one still fits beside them
    for call in held:
        call.cancel()
    await asyncio.sleep(0.2)
    await _first_token(stub.Generate(big, timeout=30))  # the bytes were given back
