"""Fake engine and predictor servers for the gateway tests, and a Stack that wires a gateway to them.

The fakes are tiny grpc.aio servicers on 127.0.0.1 port 0 (via services.common.server.start_server),
so the gateway's wire behaviour is tested without depending on the real engine or predictor code.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc
import pytest

from services.common.contracts import (
    common_pb2,
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    predictor_service_pb2,
    predictor_service_pb2_grpc,
)
from services.common.server import RunningServer, start_server
from services.common.tokenizer import load_tokenizer
from services.gateway import app
from services.gateway.config import GatewayConfig

MAX_CONTEXT_TOKENS = 64
VOCAB_SIZE = 32000
TOKENIZER = load_tokenizer("default")
ENGINE_TIMINGS = common_pb2.Timings(queue_time_s=0.01, time_to_first_token_s=0.02, end_to_end_s=0.03, num_preemptions=1)


class FakeEngine(engine_service_pb2_grpc.EngineServiceServicer):
    """Streams a scripted list of token ids; records requests and whether its calls were cancelled."""

    def __init__(self) -> None:
        self.output_ids: list[int] = TOKENIZER.encode("Hello there", add_bos=False)
        self.ids_per_message = 1  # ids per streamed message
        self.message_delay_s = 0.0  # sleep before each message
        self.finish_reason = common_pb2.FINISH_REASON_EOS
        self.eos_token_id: int | None = 2  # None: a model without EOS (GetModelInfo leaves the field unset)
        self.abort_status: tuple[grpc.StatusCode, str] | None = None  # abort Generate with this
        self.requests: list[engine_service_pb2.EngineServiceGenerateRequest] = []
        self.time_remaining_s: list[float | None] = []  # the deadline each call arrived with
        self.cancelled = asyncio.Event()  # set when a Generate call is cancelled by its caller

    async def Generate(self, request, context):  # noqa: N802
        self.requests.append(request)
        self.time_remaining_s.append(context.time_remaining())
        if self.abort_status is not None:
            await context.abort(*self.abort_status)
        finished = False
        try:
            for start in range(0, len(self.output_ids), self.ids_per_message):
                await asyncio.sleep(self.message_delay_s)
                ids = self.output_ids[start : start + self.ids_per_message]
                yield engine_service_pb2.EngineServiceGenerateResponse(token_ids=ids)
            finished = True
            yield engine_service_pb2.EngineServiceGenerateResponse(
                finish_reason=self.finish_reason, timings=ENGINE_TIMINGS
            )
        finally:
            # grpc.aio either cancels the handler (CancelledError) or, when the call died while
            # it was sending, closes this generator (GeneratorExit): both mean "cancelled".
            if not finished:
                self.cancelled.set()

    async def GetModelInfo(self, request, context):  # noqa: N802
        return engine_service_pb2.EngineServiceGetModelInfoResponse(
            model_name="fake-llama",
            max_context_tokens=MAX_CONTEXT_TOKENS,
            vocab_size=VOCAB_SIZE,
            eos_token_id=self.eos_token_id,
            tokenizer="default",
        )


class FakePredictor(predictor_service_pb2_grpc.PredictorServiceServicer):
    """Answers a fixed prediction after `delay_s`, or aborts with `abort_status`."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.abort_status: tuple[grpc.StatusCode, str] | None = None
        self.requests: list[predictor_service_pb2.PredictOutputLengthRequest] = []

    async def PredictOutputLength(self, request, context):  # noqa: N802
        self.requests.append(request)
        await asyncio.sleep(self.delay_s)
        if self.abort_status is not None:
            await context.abort(*self.abort_status)
        prediction = common_pb2.OutputLengthPrediction(
            mean_tokens=42.0,
            quantiles=[common_pb2.LengthQuantile(level=0.5, num_tokens=40.0)],
            source=common_pb2.PREDICTION_SOURCE_UNSPECIFIED,
        )
        return predictor_service_pb2.PredictOutputLengthResponse(
            predictions=[prediction] * len(request.inputs), model_version="fake-v1"
        )


async def start_fake_engine(engine: FakeEngine, port: int = 0) -> RunningServer:
    return await start_server(
        host="127.0.0.1",
        port=port,
        register=lambda server: engine_service_pb2_grpc.add_EngineServiceServicer_to_server(engine, server),
        service_names=["alise.v1.EngineService"],
    )


async def start_fake_predictor(predictor: FakePredictor) -> RunningServer:
    return await start_server(
        host="127.0.0.1",
        port=0,
        register=lambda server: predictor_service_pb2_grpc.add_PredictorServiceServicer_to_server(predictor, server),
        service_names=["alise.v1.PredictorService"],
    )


async def stopped_server_address() -> str:
    """The address of a server that was started on port 0 and stopped: nothing listens there."""
    server = await start_fake_engine(FakeEngine())
    await server.stop(0)
    return server.address


@dataclass
class Stack:
    """Everything one test talks to; torn down by the fixture."""

    engine: FakeEngine = field(default_factory=FakeEngine)
    predictor: FakePredictor = field(default_factory=FakePredictor)
    stub: gateway_service_pb2_grpc.GatewayServiceStub | None = None
    engine_address: str = ""  # where the gateway dials its engine
    cleanups: list = field(default_factory=list)
    handle: app.GatewayHandle | None = None  # the running gateway (its http_url for HTTP tests)

    async def start(
        self, *, engine_up=True, predictor="none", **config_overrides
    ) -> gateway_service_pb2_grpc.GatewayServiceStub:
        """predictor: "none" (no address), "up" (the fake) or "down" (an address nobody serves)."""
        if engine_up:
            engine_server = await start_fake_engine(self.engine)
            self.cleanups.append(lambda: engine_server.stop(0))
            engine_address = engine_server.address
        else:
            engine_address = await stopped_server_address()
        self.engine_address = engine_address
        predictor_address = ""
        if predictor == "up":
            predictor_server = await start_fake_predictor(self.predictor)
            self.cleanups.append(lambda: predictor_server.stop(0))
            predictor_address = predictor_server.address
        elif predictor == "down":
            predictor_address = await stopped_server_address()
        config = GatewayConfig(
            engine_address=engine_address, predictor_address=predictor_address, port=0, **config_overrides
        )
        handle = await app.start(config)
        self.handle = handle
        self.cleanups.append(lambda: handle.stop(0))
        channel = grpc.aio.insecure_channel(handle.address)
        self.cleanups.append(channel.close)
        self.stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        return self.stub


@pytest.fixture
async def stack():
    """A Stack whose servers are stopped after the test."""
    stack = Stack()
    yield stack
    for cleanup in reversed(stack.cleanups):
        await cleanup()


async def collect(call) -> list[gateway_service_pb2.GenerateResponse]:
    return [response async for response in call]


def sampling_params(**kwargs) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(**kwargs)


def text_request(prompt: str = "Say hello", **kwargs) -> gateway_service_pb2.GenerateRequest:
    return gateway_service_pb2.GenerateRequest(prompt_text=prompt, **kwargs)


def expected_continuation(prompt_ids: list[int], output_ids: list[int]) -> str:
    """The text the output adds to the prompt, as a full decode sees it."""
    return TOKENIZER.decode(prompt_ids + output_ids)[len(TOKENIZER.decode(prompt_ids)) :]
