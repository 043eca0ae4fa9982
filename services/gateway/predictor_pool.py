"""Every predictor replica behind --predictor-address, and calls spread across them.

Predictions are short unary calls of equal cost, so the spread is simple: the SERVING replica with
the fewest calls in flight, ties in turn (round-robin when calls do not overlap). Replicas are found
and checked like engines (replica_discovery, replica_health); a replica whose call fails with
UNAVAILABLE is skipped until a check answers SERVING again.

`pool.stub` stands in for a PredictorServiceStub: `await pool.stub.PredictOutputLength(request,
timeout=...)` (or any other unary PredictorService method) goes to one replica per call, so code
written against a single stub (the estimator, the feedback reporter) spreads its calls unchanged.
With no routable replica the call raises NotReady, which callers treat as "no answer".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import grpc

from services.common.contracts import predictor_service_pb2_grpc
from services.common.errors import NotReady
from services.gateway.replica_discovery import Resolve, resolve_target
from services.gateway.replica_health import (
    HealthSettings,
    HealthTracker,
    PeriodicallyChecked,
    ReplicaState,
    check_serving,
    describe_rpc_error,
)
from services.gateway.replica_set import ReplicaSet

log = logging.getLogger(__name__)

PREDICTOR_SERVICE_NAME = "alise.v1.PredictorService"
ChannelFactory = Callable[[str], grpc.aio.Channel]


@dataclass(frozen=True)
class PredictorReplicaReport:
    """A snapshot of one predictor replica, for tests and benchmarks."""

    address: str  # host:port
    state: str  # a ReplicaState value
    num_calls: int  # calls sent to it
    num_failed_calls: int  # of those, failed with any gRPC error


class PredictorReplica(PeriodicallyChecked):
    """One predictor replica: channel, stub, health checks, call counters."""

    def __init__(self, address: str, *, make_channel: ChannelFactory, health: HealthSettings) -> None:
        self.address = address  # host:port
        self.retiring = False  # set by ReplicaSet when discovery no longer lists it
        self.health = HealthTracker(health.max_failures)
        self.num_in_flight = 0  # calls sent and not yet answered
        self.num_calls = 0  # calls sent since it was added
        self.num_failed_calls = 0  # of those, ended with a gRPC error
        self._settings = health
        self._channel = make_channel(address)
        self.stub = predictor_service_pb2_grpc.PredictorServiceStub(self._channel)

    async def check_once(self) -> None:
        try:
            serving = await check_serving(self._channel, PREDICTOR_SERVICE_NAME, self._settings.timeout_s)
        except grpc.aio.AioRpcError as error:
            if self.health.on_failure(describe_rpc_error(error)):
                log.warning("predictor %s is down: %s", self.address, self.health.last_error)
        else:
            self.health.on_answer(serving)

    def report(self) -> PredictorReplicaReport:
        return PredictorReplicaReport(self.address, self.health.state.value, self.num_calls, self.num_failed_calls)


class PredictorPool:
    """The predictor replicas of one spec; `stub` spreads calls across them."""

    def __init__(
        self,
        spec: str,
        *,
        make_channel: ChannelFactory,
        health: HealthSettings,
        discovery_interval_s: float,
        resolve: Resolve = resolve_target,
    ) -> None:
        self.spec = spec  # --predictor-address as configured
        self._replicas: ReplicaSet[PredictorReplica] = ReplicaSet(
            spec,
            discovery_interval_s=discovery_interval_s,
            create=lambda address: PredictorReplica(address, make_channel=make_channel, health=health),
            resolve=resolve,
        )
        self._num_picks = 0  # calls placed so far (tie-breaker)
        self.stub = BalancedPredictorStub(self)

    async def start(self) -> None:
        await self._replicas.start()

    async def close(self) -> None:
        await self._replicas.close()

    def reports(self) -> list[PredictorReplicaReport]:
        return [self._replicas.replicas[a].report() for a in sorted(self._replicas.replicas)]

    def pick(self) -> PredictorReplica:
        """The replica for the next call: SERVING (else UNKNOWN), fewest in flight, then in turn."""
        active = self._replicas.active()
        candidates = [r for r in active if r.health.state == ReplicaState.SERVING]
        candidates = candidates or [r for r in active if r.health.state == ReplicaState.UNKNOWN]
        if not candidates:
            raise NotReady(f"predictor unavailable: no replica of {self.spec} is serving")
        fewest = min(r.num_in_flight for r in candidates)
        tied = [r for r in candidates if r.num_in_flight == fewest]
        self._num_picks += 1
        return tied[self._num_picks % len(tied)]

    async def call(self, method_name: str, request: Any, **call_kwargs: Any) -> Any:
        """One unary call of `method_name` on a picked replica."""
        replica = self.pick()
        replica.num_in_flight += 1
        replica.num_calls += 1
        try:
            return await getattr(replica.stub, method_name)(request, **call_kwargs)
        except grpc.aio.AioRpcError as error:
            replica.num_failed_calls += 1
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                replica.health.on_call_failed(describe_rpc_error(error))
            raise
        finally:
            replica.num_in_flight -= 1
            self._replicas.release(replica)


class BalancedPredictorStub:
    """Looks like a PredictorServiceStub; each unary method call goes to one replica of the pool."""

    def __init__(self, pool: PredictorPool) -> None:
        self._pool = pool

    def __getattr__(self, method_name: str) -> Callable[..., Any]:
        if not method_name[:1].isupper():  # RPC methods are CamelCase; anything else is not ours
            raise AttributeError(method_name)

        async def call(request: Any, **call_kwargs: Any) -> Any:
            return await self._pool.call(method_name, request, **call_kwargs)

        return call
