"""EnginePool and PredictorPool against fake replicas on loopback (real gRPC, port 0).

Each fake engine serves Generate, GetStats (its predicted outstanding work: a fixed base plus the
predictions of its live streams, like a real engine) and a grpc.health.v1 service that can answer
NOT_SERVING or fall silent (a frozen host). Discovery uses an injected resolver so tests can add and
remove replicas at run time. Health checks run every 50 ms here, so each test takes well under a second.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.contracts import (
    common_pb2,
    engine_service_pb2,
    engine_service_pb2_grpc,
    predictor_service_pb2,
    predictor_service_pb2_grpc,
)
from services.common.errors import NotReady
from services.gateway.engine_pool import EnginePool, EnginePoolSettings
from services.gateway.predictor_pool import PredictorPool
from services.gateway.replica_discovery import PeerTarget
from services.gateway.replica_health import HealthSettings, ReplicaState
from services.gateway.routing import RoutingPolicy
from tests.gateway_fakes import FakeEngine, FakePredictor

pytestmark = pytest.mark.timeout(30)
HEALTH = HealthSettings(interval_s=0.05, timeout_s=0.2, max_failures=2)
SECONDS_PER_TOKEN = 0.01  # every fake engine drains at this rate


class StatsEngine(FakeEngine):
    """FakeEngine plus GetStats: base_tokens + the predicted tokens of its live streams."""

    def __init__(self) -> None:
        super().__init__()
        self.base_tokens = 0.0  # outstanding tokens of "other gateways"
        self.live_predicted_tokens = 0.0

    async def Generate(self, request, context):  # noqa: N802
        predicted = min(request.prediction.mean_tokens, request.sampling.max_tokens)
        self.live_predicted_tokens += predicted
        try:
            async for message in super().Generate(request, context):
                yield message
        finally:
            self.live_predicted_tokens -= predicted

    async def GetStats(self, request, context):  # noqa: N802
        tokens = self.base_tokens + self.live_predicted_tokens
        return engine_service_pb2.EngineServiceGetStatsResponse(
            predicted_outstanding_tokens=tokens, predicted_outstanding_work_s=tokens * SECONDS_PER_TOKEN
        )


class SwitchableHealth(health_pb2_grpc.HealthServicer):
    """Answers SERVING / NOT_SERVING, or never answers while `silent` (a frozen host)."""

    def __init__(self) -> None:
        self.serving = True
        self.silent = False

    async def Check(self, request, context):  # noqa: N802
        while self.silent:
            await asyncio.sleep(0.01)
        status = health_pb2.HealthCheckResponse.SERVING if self.serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)


@dataclass
class Replica:
    """One fake replica server: its servicer, health switch and address."""

    servicer: object
    health: SwitchableHealth = field(default_factory=SwitchableHealth)
    server: grpc.aio.Server | None = None
    address: str = ""

    async def start(self) -> "Replica":
        self.server = grpc.aio.server()
        if isinstance(self.servicer, FakeEngine):
            engine_service_pb2_grpc.add_EngineServiceServicer_to_server(self.servicer, self.server)
        else:
            predictor_service_pb2_grpc.add_PredictorServiceServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        await self.server.start()
        return self


class Resolver:
    """A DNS stand-in: `addresses` is what the one name resolves to right now."""

    def __init__(self, *replicas: Replica) -> None:
        self.addresses = frozenset(r.address for r in replicas)

    async def __call__(self, target: PeerTarget) -> frozenset[str]:
        return self.addresses


@pytest.fixture
async def servers():
    started: list[Replica] = []

    async def start(servicer) -> Replica:
        started.append(await Replica(servicer).start())
        return started[-1]

    yield start
    for replica in started:
        replica.health.silent = False
        await replica.server.stop(0)


async def _engine_pool(resolver: Resolver, policy=RoutingPolicy.LEAST_WORK, **overrides) -> EnginePool:
    settings = EnginePoolSettings(
        spec="engine:50052",
        policy=policy,
        health=HEALTH,
        discovery_interval_s=0.05,
        max_attempts=overrides.get("max_attempts", 2),
    )
    pool = EnginePool(settings, grpc.aio.insecure_channel, resolve=resolver)
    await pool.start()
    return pool


async def _until(predicate, timeout_s: float = 5.0) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline_s, "condition not reached in time"
        await asyncio.sleep(0.01)


def _state(pool: EnginePool, replica: Replica) -> str | None:
    """The replica's state in the pool, None while the pool does not know it."""
    return next((r.state for r in pool.reports() if r.address == replica.address), None)


def _request(predicted_tokens: float, max_tokens: int = 1000) -> engine_service_pb2.EngineServiceGenerateRequest:
    return engine_service_pb2.EngineServiceGenerateRequest(
        request_id="r",
        prompt_token_ids=[1, 2, 3],
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens),
        prediction=common_pb2.OutputLengthPrediction(mean_tokens=predicted_tokens),
    )


async def _collect(pool: EnginePool, request) -> list:
    return [message async for message in pool.generate(request, timeout_s=10)]


def _slow_engine(num_messages: int = 400) -> StatsEngine:
    engine = StatsEngine()
    engine.output_ids = [500] * num_messages
    engine.message_delay_s = 0.02
    return engine


async def _open_stream(pool: EnginePool, predicted_tokens: float):
    """A stream that has delivered its first message, and the generator to close it with."""
    stream = pool.generate(_request(predicted_tokens), timeout_s=30)
    await stream.__anext__()
    return stream


# ----------------------------------------------------------------------------- routing


async def test_least_work_follows_engine_stats_and_the_gateways_own_ledger(servers):
    busy, idle = await servers(_slow_engine()), await servers(_slow_engine())
    busy.servicer.base_tokens = 1000  # 10 s of another gateway's work
    pool = await _engine_pool(Resolver(busy, idle))
    await _until(lambda: all(r.state == "serving" for r in pool.reports()))
    await _until(lambda: {r.address: r.seconds_per_token for r in pool.reports()}[busy.address] is not None)
    # The idle replica has reported no rate yet: it is charged the busy one's, 0.01 s per token.
    # 100-token requests: the idle replica takes them until its predicted work (ledger) nears 10 s.
    streams = [await _open_stream(pool, 100) for _ in range(5)]
    assert (len(busy.servicer.requests), len(idle.servicer.requests)) == (0, 5)
    busy.servicer.base_tokens = 0  # the other gateway's work is done: both replicas are now comparable
    await asyncio.sleep(3 * HEALTH.interval_s)
    streams += [await _open_stream(pool, 100) for _ in range(5)]
    assert (len(busy.servicer.requests), len(idle.servicer.requests)) == (5, 5)
    # Five 100-token requests in flight: the ledger and the next stats poll agree on 500 tokens.
    await _until(lambda: {r.address: r.outstanding_tokens for r in pool.reports()}[busy.address] == 500)
    for stream in streams:
        await stream.aclose()
    await _until(lambda: all(r.num_in_flight == 0 for r in pool.reports()))
    await pool.close()


async def test_round_robin_alternates_whatever_the_load(servers):
    busy, idle = await servers(StatsEngine()), await servers(StatsEngine())
    busy.servicer.base_tokens = 1000
    pool = await _engine_pool(Resolver(busy, idle), policy=RoutingPolicy.ROUND_ROBIN)
    await _until(lambda: all(r.state == "serving" for r in pool.reports()))
    for _ in range(6):
        await _collect(pool, _request(10))
    assert (len(busy.servicer.requests), len(idle.servicer.requests)) == (3, 3)
    await pool.close()


# ----------------------------------------------------------------------------- health and membership


async def test_unhealthy_and_draining_replicas_are_skipped_until_they_recover(servers):
    first, second = await servers(StatsEngine()), await servers(StatsEngine())
    # Round-robin would alternate: every request the skipped replica does not get is health's doing.
    pool = await _engine_pool(Resolver(first, second), policy=RoutingPolicy.ROUND_ROBIN)
    await _until(lambda: all(r.state == "serving" for r in pool.reports()))
    first.health.serving = False  # draining: NOT_SERVING
    await _until(lambda: _state(pool, first) == "draining")
    for _ in range(4):
        await _collect(pool, _request(10))
    assert (len(first.servicer.requests), len(second.servicer.requests)) == (0, 4)
    first.health.serving = True
    await _until(lambda: _state(pool, first) == "serving")
    for _ in range(4):
        await _collect(pool, _request(10))
    assert len(first.servicer.requests) == 2  # back in the rotation
    await pool.close()


async def test_replicas_added_and_removed_at_run_time(servers):
    first, second = await servers(_slow_engine()), await servers(StatsEngine())
    resolver = Resolver(first)
    pool = await _engine_pool(resolver)
    stream = await _open_stream(pool, 50)  # in flight on `first`
    resolver.addresses = frozenset({first.address, second.address})  # scaled up
    await _until(lambda: _state(pool, second) == "serving")
    await _collect(pool, _request(10))
    assert len(second.servicer.requests) == 1  # the new replica, idle, takes the next request
    resolver.addresses = frozenset({second.address})  # scaled down: `first` retires and drains
    await _until(lambda: any(r.retiring for r in pool.reports()))
    await _collect(pool, _request(10))
    assert len(first.servicer.requests) == 1 and len(second.servicer.requests) == 2
    first.servicer.message_delay_s = 0.0
    remaining = [message async for message in stream]  # the draining stream still finishes
    assert remaining[-1].finish_reason == common_pb2.FINISH_REASON_EOS
    await _until(lambda: [r.address for r in pool.reports()] == [second.address])
    await pool.close()


async def test_a_silent_replica_goes_down_and_its_streams_end_with_unavailable(servers):
    frozen, healthy = await servers(_slow_engine()), await servers(_slow_engine())
    pool = await _engine_pool(Resolver(frozen, healthy))
    await _until(lambda: all(r.state == "serving" for r in pool.reports()))
    streams = [await _open_stream(pool, 100) for _ in range(2)]  # one on each replica
    frozen.health.silent = True
    frozen.servicer.message_delay_s = 3600  # its streams stall too: no reset, no message, nothing
    started_s = time.monotonic()
    outcomes = await asyncio.gather(*(_drain(stream, limit=5) for stream in streams))
    elapsed_s = time.monotonic() - started_s
    assert sorted(outcomes, key=str) == ["ok", "unavailable"]
    # Detection: max_failures checks, each timing out after timeout_s, spaced by interval_s.
    assert elapsed_s < HEALTH.max_failures * (HEALTH.timeout_s + HEALTH.interval_s) + 1.0
    assert _state(pool, frozen) == "down"
    healthy.servicer.message_delay_s = 0.0
    await _collect(pool, _request(10))  # new requests go to the survivor
    assert len(healthy.servicer.requests) == 2
    await pool.close()


async def _drain(stream, limit: int) -> str:
    """Reads `limit` more messages: "ok", or "unavailable" when the stream ends with NotReady."""
    try:
        for _ in range(limit):
            await stream.__anext__()
    except NotReady as error:
        assert "stopped answering health checks" in str(error)
        return "unavailable"
    finally:
        await stream.aclose()
    return "ok"


async def test_a_refusal_before_the_first_message_is_retried_on_another_replica(servers):
    refusing, healthy = await servers(StatsEngine()), await servers(StatsEngine())
    refusing.servicer.abort_status = (grpc.StatusCode.UNAVAILABLE, "engine is shutting down")
    pool = await _engine_pool(Resolver(refusing, healthy), policy=RoutingPolicy.ROUND_ROBIN)
    await _until(lambda: all(r.state == "serving" for r in pool.reports()))
    for _ in range(2):
        messages = await _collect(pool, _request(10))
        assert messages[-1].finish_reason == common_pb2.FINISH_REASON_EOS
    assert len(refusing.servicer.requests) == 1  # tried once, then skipped (suspect) until a check
    healthy.servicer.abort_status = (grpc.StatusCode.UNAVAILABLE, "also shutting down")
    with pytest.raises(NotReady, match="engine unavailable"):
        await _collect(pool, _request(10))
    await pool.close()


async def test_no_replica_at_all_is_unavailable(servers):
    pool = await _engine_pool(Resolver())
    with pytest.raises(NotReady, match="no replica of engine:50052 has been resolved"):
        await _collect(pool, _request(10))
    with pytest.raises(NotReady, match="engine unavailable"):
        await pool.get_model_info(1.0)
    await pool.close()


# ----------------------------------------------------------------------------- predictors


async def test_predictor_calls_are_spread_and_skip_a_dead_replica(servers):
    first, second = await servers(FakePredictor()), await servers(FakePredictor())
    pool = PredictorPool(
        "predictor:50053",
        make_channel=grpc.aio.insecure_channel,
        health=HEALTH,
        discovery_interval_s=0.05,
        resolve=Resolver(first, second),
    )
    await pool.start()
    await _until(lambda: all(r.state == "serving" for r in pool.reports()))
    request = predictor_service_pb2.PredictOutputLengthRequest(
        inputs=[predictor_service_pb2.PredictionInput(prompt_text="hi", num_prompt_tokens=2)]
    )
    for _ in range(10):
        await pool.stub.PredictOutputLength(request, timeout=5)
    assert (len(first.servicer.requests), len(second.servicer.requests)) == (5, 5)
    await first.server.stop(0)
    await _until(
        lambda: (
            pool.reports()[[r.address for r in pool.reports()].index(first.address)].state
            in (ReplicaState.SUSPECT.value, ReplicaState.DOWN.value)
        )
    )
    for _ in range(4):
        await pool.stub.PredictOutputLength(request, timeout=5)
    assert len(second.servicer.requests) == 9
    await second.server.stop(0)
    await _until(lambda: all(r.state != "serving" for r in pool.reports()))
    with pytest.raises(NotReady, match="predictor unavailable"):
        await pool.stub.PredictOutputLength(request, timeout=5)
    await pool.close()
