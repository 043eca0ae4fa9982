"""The fuzz phase of `alise bench chaos`: every gRPC method, N cases per service, then the gateway's
OpenAI HTTP routes, N cases per route, outside pytest."""

from __future__ import annotations

import math
import pathlib

import grpc
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings

from services.bench.chaos_fuzz import FAILING_CODES, FuzzTarget, ThreadedStack, any_request_bytes, call_raw
from services.bench.chaos_fuzz_http import MAX_FUZZ_OUTPUT_TOKENS, ROUTES, fuzz_route, is_failing
from services.bench.chaos_stack import ENGINE_ARGS, ChaosStackConfig
from services.common.contracts import engine_service_pb2, gateway_service_pb2, memory_service_pb2, predictor_service_pb2

CALL_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 600.0  # the long form runs at low priority (nice) on a busy machine: the engine may take minutes
SERVICES = {
    "gateway": gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    "engine-0": engine_service_pb2.DESCRIPTOR.services_by_name["EngineService"],
    "predictor": predictor_service_pb2.DESCRIPTOR.services_by_name["PredictorService"],
    "memory": memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"],
}


def _fuzz_method(channel: grpc.Channel, target: FuzzTarget, num_cases: int) -> dict[str, int]:
    codes: dict[str, int] = {}

    @settings(max_examples=num_cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(payload=any_request_bytes(target.method.input_type))
    def fuzz(payload: bytes) -> None:
        code = call_raw(channel, target, payload, CALL_TIMEOUT_S)
        codes[code.name] = codes.get(code.name, 0) + 1

    fuzz()
    return codes


def fuzz_all(cases_per_service: int, log_dir: pathlib.Path) -> dict:
    """{service: {method: {status: count}}, failing: count, healthy_after: bool}."""
    stack = ThreadedStack(
        ChaosStackConfig(
            log_dir=log_dir,
            num_engines=1,
            engine_args=(*ENGINE_ARGS, "--max-model-len", "256"),
            startup_timeout_s=STARTUP_TIMEOUT_S,
            # a body without max_tokens generates briefly too: no answer within 10 s is then a hang
            gateway_options={"default_max_tokens": MAX_FUZZ_OUTPUT_TOKENS},
        )
    ).start()
    try:
        figures: dict = {"per_method": {}}
        healthy = True
        for service, descriptor in SERVICES.items():
            address = stack.stack.gateway_address if service == "gateway" else stack.stack.addresses[service]
            with grpc.insecure_channel(address) as channel:
                per_method = math.ceil(cases_per_service / len(descriptor.methods))
                for method in descriptor.methods:
                    target = FuzzTarget(service, address, method)
                    figures["per_method"][str(target)] = _fuzz_method(channel, target, per_method)
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                healthy &= reply.status == health_pb2.HealthCheckResponse.SERVING
        failing = {code.name for code in FAILING_CODES} | {"DEADLINE_EXCEEDED"}
        figures["num_cases"] = sum(sum(codes.values()) for codes in figures["per_method"].values())
        figures["num_failing"] = sum(
            count for codes in figures["per_method"].values() for code, count in codes.items() if code in failing
        )
        figures["http"] = _fuzz_http(stack.stack.gateway.http_url, cases_per_service)
        healthy &= requests.get(stack.stack.gateway.http_url + "/health", timeout=5).status_code == 200
        figures["healthy_after"] = healthy and all(c.returncode is None for c in stack.stack.children.values())
        return figures
    finally:
        stack.stop()


def _fuzz_http(base_url: str, cases_per_route: int) -> dict:
    """The OpenAI routes, cases_per_route bodies each: per route the statuses, failing bodies and the
    slowest answer; num_cases, num_failing."""
    with requests.Session() as session:
        per_route = {route: fuzz_route(session, base_url + route, cases_per_route, CALL_TIMEOUT_S) for route in ROUTES}
    return {
        "per_route": {
            route: {str(status): n for status, n in found.statuses.items()} for route, found in per_route.items()
        },
        "failing_bodies": {route: found.failing_bodies for route, found in per_route.items() if found.failing_bodies},
        "slowest_answer_s": {route: round(found.slowest_answer_s, 3) for route, found in per_route.items()},
        "num_cases": sum(sum(found.statuses.values()) for found in per_route.values()),
        "num_failing": sum(
            n for found in per_route.values() for status, n in found.statuses.items() if is_failing(status)
        ),
    }
