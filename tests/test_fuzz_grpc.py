"""Fuzzing every public gRPC method of every service: no INTERNAL, no UNKNOWN, no hang, healthy after.

The real stack (memory, predictor, one engine as processes; the gateway in-process on the stack's
thread). Each method of GatewayService, EngineService, PredictorService and MemoryService gets
well-typed random messages, mutated message bytes and raw bytes (services/bench/chaos_fuzz.py),
at least 500 cases per service; `alise bench chaos --fuzz-cases` runs 10,000. Afterwards every
service still answers its health check and a normal generation still works.
"""

from __future__ import annotations

import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings

from services.bench.chaos_fuzz import FAILING_CODES, FuzzTarget, ThreadedStack, any_request_bytes, call_raw
from services.bench.chaos_stack import ENGINE_ARGS, ChaosStackConfig
from services.common.contracts import (
    common_pb2,
    engine_service_pb2,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    memory_service_pb2,
    predictor_service_pb2,
)

pytestmark = pytest.mark.timeout(300)
CASES_PER_SERVICE = 500
CALL_TIMEOUT_S = 10.0  # no answer within this is a hang
SERVICES = {  # stack child (or "gateway") -> its alise service descriptor
    "gateway": gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    "engine-0": engine_service_pb2.DESCRIPTOR.services_by_name["EngineService"],
    "predictor": predictor_service_pb2.DESCRIPTOR.services_by_name["PredictorService"],
    "memory": memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"],
}
METHODS = [(service, method) for service, descriptor in SERVICES.items() for method in descriptor.methods]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = ChaosStackConfig(
        log_dir=tmp_path_factory.mktemp("fuzz"),
        num_engines=1,
        engine_args=(*ENGINE_ARGS, "--max-model-len", "256"),  # random max_tokens stay cheap
    )
    threaded = ThreadedStack(config).start()
    yield threaded
    threaded.stop()


@pytest.fixture(scope="module")
def channels(stack):
    addresses = {name: stack.stack.addresses.get(name) or stack.stack.gateway_address for name in SERVICES}
    opened = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_fuzz_method(stack, channels, service, method):
    num_methods = len(SERVICES[service].methods)
    target = FuzzTarget(service, "", method)
    failures: list[str] = []
    codes: dict[str, int] = {}

    @settings(
        max_examples=math.ceil(CASES_PER_SERVICE / num_methods),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payload=any_request_bytes(method.input_type))
    def fuzz(payload: bytes) -> None:
        code = call_raw(channels[service], target, payload, CALL_TIMEOUT_S)
        codes[code.name] = codes.get(code.name, 0) + 1
        if code in FAILING_CODES or code == grpc.StatusCode.DEADLINE_EXCEEDED:
            failures.append(f"{target} -> {code.name} for {payload[:80]!r}")

    fuzz()
    print(target, codes)
    assert sum(codes.values()) >= math.ceil(CASES_PER_SERVICE / num_methods)
    assert not failures, failures[:5]


def test_every_service_is_healthy_and_generates_after_the_fuzzing(stack, channels):
    for name, channel in channels.items():
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    assert all(child.returncode is None for child in stack.stack.children.values())
    request = gateway_service_pb2.GenerateRequest(
        prompt_text="hello", sampling=common_pb2.SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    )
    stub = gateway_service_pb2_grpc.GatewayServiceStub(channels["gateway"])
    tokens = [t for message in stub.Generate(request, timeout=30) for t in message.token_ids]
    assert len(tokens) == 4
