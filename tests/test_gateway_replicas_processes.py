"""Two engine and two predictor replicas as real processes on loopback, gateways in-process.

What compose's `--scale engine=2 --scale predictor=2` gives, minus Docker: the gateway is pointed at
all four addresses (comma-separated specs) and must
- keep short requests off the engine busy with a long one (least-work), or alternate (round-robin);
- spread predictor calls over both predictors;
- when one engine is SIGKILLed mid-run: end the streams that were on it with UNAVAILABLE within a
  few seconds, keep the other engine's streams going, and send new requests to the survivor (under
  round-robin, which would otherwise send every other request to the dead engine).
Which engine ran what is checked from the engines' own GetStats, not only from the gateway's counters.
The kill test comes last: it leaves one engine dead.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import pytest_asyncio

from services.cli.replica_fleet import FleetConfig, ReplicaFleet
from services.common.contracts import (
    common_pb2,
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
)
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]
LONG_PROMPT = "Write a long, detailed story in many chapters about a dragon who learns to sail across the ocean."
SHORT_PROMPT = "Say hi."
NUM_SHORT = 6
SHORT_MAX_TOKENS = 2


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet(tmp_path_factory):
    fleet = ReplicaFleet(FleetConfig(num_engines=2, num_predictors=2, log_dir=tmp_path_factory.mktemp("fleet")))
    await fleet.start()
    yield fleet
    await fleet.stop()


class Gateway:
    """An in-process gateway over the fleet, a client stub, and the engines' own stats stubs."""

    async def start(self, fleet: ReplicaFleet, policy: str) -> "Gateway":
        config = GatewayConfig(
            engine_address=",".join(fleet.engine_addresses),
            predictor_address=",".join(fleet.predictor_addresses),
            engine_routing=policy,
            port=0,
            feedback_queue_size=0,  # predictions only reach the predictors
            # Generous deadlines: on a busy 2-core machine a slow answer must not look like a dead replica
            # (a killed engine resets its connections, which needs no deadline to be noticed).
            predictor_timeout_ms=3000,
            health_check_interval_s=0.2,
            health_check_timeout_s=3.0,
        )
        self.handle = await gateway_app.start(config)
        self.channels = [grpc.aio.insecure_channel(a) for a in [self.handle.address, *fleet.engine_addresses]]
        self.stub = gateway_service_pb2_grpc.GatewayServiceStub(self.channels[0])
        self.engines = {
            address: engine_service_pb2_grpc.EngineServiceStub(channel)
            for address, channel in zip(fleet.engine_addresses, self.channels[1:])
        }
        deadline_s = time.monotonic() + 30
        while not all(r.state == "serving" for r in [*self.reports(), *self.handle.peers.predictors.reports()]):
            assert time.monotonic() < deadline_s, f"replicas not serving: {self.reports()}"
            await asyncio.sleep(0.05)
        return self

    def reports(self) -> list:
        return self.handle.peers.engines.reports()

    def routed(self) -> dict[str, int]:
        return {r.address: r.counters.num_routed for r in self.reports()}

    async def generated_tokens(self, address: str) -> int:
        """Output tokens an idle engine reports having generated since it started (its own count).

        Read until two answers 0.1 s apart agree: the engine publishes its stats snapshot just after
        it sends a request's last tokens, so the very first read may miss the last step.
        """
        request = engine_service_pb2.EngineServiceGetStatsRequest()
        previous = None
        for _ in range(50):
            count = (await self.engines[address].GetStats(request, timeout=5)).num_generated_tokens
            if count == previous:
                return count
            previous = count
            await asyncio.sleep(0.1)
        raise AssertionError(f"engine {address} kept generating: it was not idle")

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.handle.stop(0)


def generate_request(prompt: str, max_tokens: int) -> gateway_service_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return gateway_service_pb2.GenerateRequest(prompt_text=prompt, sampling=sampling)


async def run_short_requests(gateway: Gateway) -> None:
    for _ in range(NUM_SHORT):
        call = gateway.stub.Generate(generate_request(SHORT_PROMPT, SHORT_MAX_TOKENS), timeout=30)
        responses = [response async for response in call]
        assert responses[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH


async def shorts_beside_a_long_request(fleet: ReplicaFleet, policy: str) -> tuple[dict, int, str, str]:
    """Runs NUM_SHORT short requests while one long request streams; returns routed counts per
    replica, the tokens the other engine generated meanwhile (its own count), and the addresses of
    the engine running the long request and of the other one."""
    gateway = await Gateway().start(fleet, policy)
    long_call = gateway.stub.Generate(generate_request(LONG_PROMPT, 400), timeout=60)
    await long_call.read()
    (long_engine,) = [r.address for r in gateway.reports() if r.num_in_flight == 1]
    long_predicted = next(r.counters.routed_predicted_tokens for r in gateway.reports() if r.address == long_engine)
    # Precondition: the long request must look long to the gateway (here, 15x a short one's work).
    assert long_predicted >= 15 * SHORT_MAX_TOKENS, f"the long request was predicted only {long_predicted} tokens"
    (other,) = [a for a in gateway.engines if a != long_engine]
    before = await gateway.generated_tokens(other)
    routed_before = gateway.routed()
    await run_short_requests(gateway)
    generated = await gateway.generated_tokens(other) - before
    routed = {a: n - routed_before[a] for a, n in gateway.routed().items()}
    assert (await long_call.read()) is not grpc.aio.EOF, "the long request ended before the short ones"
    long_call.cancel()
    await gateway.close()
    return routed, generated, long_engine, other


async def test_least_work_keeps_short_requests_off_the_engine_running_a_long_one(fleet):
    routed, generated, long_engine, other = await shorts_beside_a_long_request(fleet, "least-work")
    assert routed == {long_engine: 0, other: NUM_SHORT}
    assert generated == NUM_SHORT * SHORT_MAX_TOKENS  # the idle engine ran exactly the shorts


async def test_round_robin_alternates_on_the_same_workload(fleet):
    routed, generated, long_engine, other = await shorts_beside_a_long_request(fleet, "round-robin")
    assert routed == {long_engine: NUM_SHORT // 2, other: NUM_SHORT // 2}
    assert generated == NUM_SHORT // 2 * SHORT_MAX_TOKENS


async def test_predictor_calls_are_spread_over_both_predictors(fleet):
    gateway = await Gateway().start(fleet, "least-work")
    await run_short_requests(gateway)
    reports = gateway.handle.peers.predictors.reports()
    await gateway.close()
    assert [r.num_failed_calls for r in reports] == [0, 0]
    assert sorted(r.num_calls for r in reports) == [NUM_SHORT // 2, NUM_SHORT // 2]


async def _read_until_end(call, num_messages: int) -> tuple[str, float]:
    """Reads up to num_messages more; returns ("ok" | status name, monotonic time it ended)."""
    try:
        for _ in range(num_messages):
            if await call.read() is grpc.aio.EOF:
                break
    except grpc.aio.AioRpcError as error:
        return error.code().name, time.monotonic()
    call.cancel()
    return "ok", time.monotonic()


async def test_killed_engine_ends_its_streams_with_unavailable_and_new_requests_go_to_the_survivor(fleet):
    # Round-robin places exactly two streams on each engine, and would send every other new request
    # to the dead engine if health checking did not take it out.
    gateway = await Gateway().start(fleet, "round-robin")
    calls = [gateway.stub.Generate(generate_request(LONG_PROMPT, 400), timeout=60) for _ in range(4)]
    for call in calls:
        await call.read()
    assert sorted(r.num_in_flight for r in gateway.reports()) == [2, 2]
    victim, survivor = fleet.engines[0], fleet.engine_addresses[1]
    killed_at_s = time.monotonic()
    fleet.kill(victim)
    outcomes = await asyncio.gather(*(_read_until_end(call, 20) for call in calls))
    assert sorted(status for status, _ in outcomes) == ["UNAVAILABLE", "UNAVAILABLE", "ok", "ok"]
    detect_s = max(ended_s for status, ended_s in outcomes if status == "UNAVAILABLE") - killed_at_s
    assert detect_s < 3.0, f"streams on the killed engine took {detect_s:.2f} s to end"
    states = {r.address: r.state for r in gateway.reports()}
    assert states[victim.address] in ("suspect", "down") and states[survivor] == "serving"
    routed_before = gateway.routed()
    await run_short_requests(gateway)
    assert gateway.routed()[survivor] - routed_before[survivor] == NUM_SHORT
    await gateway.close()
