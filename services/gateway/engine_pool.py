"""Every engine replica behind the gateway's --engine-address, and the choice of one per request.

    request -> candidates: SERVING replicas; else UNKNOWN ones (just discovered); else all the
               others as a last resort (health may be stale: such a call fails fast if really down)
            -> policy (routing.py): least predicted outstanding work, or round-robin
            -> stream from that replica, moving its ledger (engine_load) with every message

Failures before the first message is relayed (the replica refused: UNAVAILABLE while it died or
drains, RESOURCE_EXHAUSTED when its queue is full) are retried on another replica, up to
max_attempts in all, within the client's deadline: the client has seen nothing yet, so this is safe.
After the first message an error ends the client's stream with that error's status.

`check_room` is the cheap refusal before any of that (engine_saturation): when every candidate is
known to be full (a new request's predicted wait for its first token over max_queued_work_s: the work waiting
to start, or the time until a full batch frees a place; that place's wait over max_queued_steps of the
replica's steps; or a recent queue-full refusal), the
request is refused at once, before the gateway tokenizes it; a full replica is also routed to last.

A stream on a replica that goes DOWN (engine_replica) is aborted when its channel is replaced; the
client gets UNAVAILABLE naming the replica, within max_failures checks of it going silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from dataclasses import dataclass
from typing import AsyncIterator

from services.common.contracts import engine_service_pb2
from services.common.errors import AliseError, DeadlineExceeded, NotReady, Overloaded
from services.common.refusal import RefusalReason
from services.gateway.engine_client import EngineQueueFull
from services.gateway.engine_replica import ChannelFactory, EngineReplica, ReplicaReport
from services.gateway.engine_saturation import REFUSED_BEFORE_WORK, queued_steps_reason, queued_work_reason
from services.gateway.model_info import ModelInfo
from services.gateway.replica_discovery import Resolve, resolve_target
from services.gateway.replica_health import HealthSettings, ReplicaState
from services.gateway.replica_set import ReplicaSet
from services.gateway.routing import ReplicaLoad, RoutingPolicy, pick_replica

log = logging.getLogger(__name__)

# The engine's scheduling prior for a request that carries no prediction (services/engine/admission.py).
ENGINE_PRIOR_OUTPUT_TOKENS = 256.0
# Work in seconds per predicted token while no replica has reported a rate: routing then compares tokens.
UNMEASURED_SECONDS_PER_TOKEN = 1.0
_RETRYABLE = (NotReady, Overloaded)


@dataclass(frozen=True)
class EnginePoolSettings:
    """How the pool finds, checks and chooses engines (a slice of GatewayConfig)."""

    spec: str  # --engine-address: comma-separated host:port entries, each resolved to all its addresses
    policy: RoutingPolicy  # how a replica is chosen per request
    health: HealthSettings  # health-check cadence, deadline and failure threshold
    discovery_interval_s: float  # seconds between two DNS lookups of the spec's names
    max_attempts: int  # replicas tried per request before its first message (>= 1)
    # predicted seconds of work waiting to start on a replica beyond which it takes no new request (0 = no bound)
    max_queued_work_s: float = 0.0
    # predicted full-batch steps until a place frees beyond which a replica takes no new request (0 = no bound)
    max_queued_steps: float = 0.0


class EnginePool:
    """Chooses an engine replica per request and relays its stream (same interface as EngineClient)."""

    def __init__(
        self, settings: EnginePoolSettings, make_channel: ChannelFactory, *, resolve: Resolve = resolve_target
    ) -> None:
        self._settings = settings
        self.address = settings.spec  # what error messages name as "the engine"
        self._replicas: ReplicaSet[EngineReplica] = ReplicaSet(
            settings.spec,
            discovery_interval_s=settings.discovery_interval_s,
            create=lambda address: EngineReplica(address, make_channel=make_channel, health=settings.health),
            resolve=resolve,
        )
        self._num_decisions = 0  # routing decisions so far (round-robin position and tie-breaker)

    async def start(self) -> None:
        await self._replicas.start()

    async def close(self) -> None:
        await self._replicas.close()

    def reports(self) -> list[ReplicaReport]:
        """A snapshot of every replica (retiring ones included), in address order."""
        rate = self._default_seconds_per_token()
        return [self._replicas.replicas[a].report(rate) for a in sorted(self._replicas.replicas)]

    async def get_model_info(self, timeout_s: float) -> ModelInfo:
        """GetModelInfo from the first replica that answers, healthiest first."""
        replicas = sorted(self._replicas.active(), key=lambda r: _STATE_ORDER[r.health.state])
        error = NotReady(f"engine unavailable: no replica of {self.address} has been resolved yet")
        for replica in replicas:
            try:
                return await replica.client.get_model_info(timeout_s)
            except NotReady as failure:
                error = failure
        raise error

    async def generate(
        self, request: engine_service_pb2.EngineServiceGenerateRequest, *, timeout_s: float | None
    ) -> AsyncIterator[engine_service_pb2.EngineServiceGenerateResponse]:
        """Streams the request from a chosen replica, retrying refusals before the first message."""
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        tried: set[str] = set()
        last_error: AliseError | None = None
        while len(tried) < self._settings.max_attempts:
            replica = self._choose(exclude=tried)
            if replica is None:
                break
            tried.add(replica.address)
            remaining_s = None if deadline_s is None else deadline_s - time.monotonic()
            if remaining_s is not None and remaining_s <= 0:
                raise DeadlineExceeded("deadline exceeded before an engine replica accepted the request")
            relayed = False
            attempt = self._stream_from(replica, request, remaining_s)
            try:
                async with contextlib.aclosing(attempt):  # closed at once when the caller stops reading
                    async for message in attempt:
                        relayed = True
                        yield message
                return
            except _RETRYABLE as error:
                if relayed:
                    raise
                last_error = error
                log.info("engine %s refused request %s (%s)", replica.address, request.request_id, error)
        if last_error is not None:
            raise last_error
        raise NotReady(f"engine unavailable: {self._describe_no_replica()}", refusal_reason=self._no_replica_reason())

    def check_room(self) -> None:
        """Raises Overloaded when every candidate replica is known to be full; never awaits.

        Called before the request is tokenized or predicted, so a refusal under overload costs the
        gateway a few attribute reads instead of that work plus an engine round trip.
        """
        candidates = self._candidates(exclude=set())
        full = [reason for reason in map(self._full_reason, candidates) if reason is not None]
        if not candidates or len(full) < len(candidates):
            return
        for replica in candidates:
            replica.queue_full.num_shed += 1
        refusal_reason, text = full[0]
        raise Overloaded(f"{REFUSED_BEFORE_WORK}: {text}; retry later", refusal_reason=refusal_reason)

    def _full_reason(self, replica: EngineReplica) -> tuple[RefusalReason, str] | None:
        """Why `replica` takes no request now (a recent queue-full refusal, too much queued work), or None."""
        refused = replica.queue_full.full_reason()
        if refused is not None:
            return RefusalReason.QUEUE_FULL, refused
        settings = self._settings
        if settings.max_queued_steps > 0:  # counted in steps: no rate needed to decide, only for the message
            steps = replica.load.first_slot_wait_steps()
            step_s = (replica.load.seconds_per_token or 0.0) * replica.load.batch_capacity
            text = queued_steps_reason(replica.address, steps, settings.max_queued_steps, step_s)
            if text is not None:
                return RefusalReason.QUEUED_WORK_LIMIT, text
        if settings.max_queued_work_s <= 0:  # no bound: nothing to predict
            return None
        rate = replica.load.seconds_per_token or self._measured_default_seconds_per_token()
        if rate is None:  # no rate measured yet: its work in seconds is unknown, not large
            return None
        queued_work_s = replica.load.waiting_tokens() * rate
        slot_wait_s = replica.load.first_slot_wait_s(rate)
        text = queued_work_reason(replica.address, queued_work_s, self._settings.max_queued_work_s, slot_wait_s)
        return None if text is None else (RefusalReason.QUEUED_WORK_LIMIT, text)

    def _candidates(self, exclude: set[str]) -> list[EngineReplica]:
        """SERVING replicas not in `exclude`; else UNKNOWN ones (just discovered); else all the others."""
        active = [r for r in self._replicas.active() if r.address not in exclude]
        candidates = [r for r in active if r.health.state == ReplicaState.SERVING]
        return candidates or [r for r in active if r.health.state == ReplicaState.UNKNOWN] or active

    def _choose(self, exclude: set[str]) -> EngineReplica | None:
        """The replica for the next attempt (one with room first), or None when no replica is left to try."""
        candidates = self._candidates(exclude)
        candidates = [r for r in candidates if self._full_reason(r) is None] or candidates
        if not candidates:
            return None
        rate = self._default_seconds_per_token()
        loads = [ReplicaLoad(r.address, r.load.outstanding_work_s(rate), r.num_in_flight) for r in candidates]
        chosen = pick_replica(self._settings.policy, loads, self._num_decisions)
        self._num_decisions += 1
        return next(r for r in candidates if r.address == chosen.address)

    async def _stream_from(
        self,
        replica: EngineReplica,
        request: engine_service_pb2.EngineServiceGenerateRequest,
        timeout_s: float | None,
    ) -> AsyncIterator[engine_service_pb2.EngineServiceGenerateResponse]:
        """One attempt on one replica, with its ledger and counters kept in step."""
        predicted = request.prediction.mean_tokens if request.prediction.mean_tokens > 0 else ENGINE_PRIOR_OUTPUT_TOKENS
        in_flight = replica.load.begin(predicted, request.sampling.max_tokens)
        counters = replica.counters
        counters.num_routed += 1
        counters.routed_predicted_tokens += in_flight.remaining_tokens
        rate = replica.load.seconds_per_token or self._measured_default_seconds_per_token()
        if rate is None:
            counters.num_routed_without_rate += 1
        else:
            counters.routed_predicted_work_s += in_flight.remaining_tokens * rate
        epoch = replica.channel_epoch
        refused = False  # the replica refused the request (it never held a place there)
        stream = replica.client.generate(request, timeout_s=timeout_s)
        try:
            async with contextlib.aclosing(stream):  # its `finally` cancels the engine call
                async for message in stream:
                    in_flight.num_received_tokens += len(message.token_ids)
                    counters.num_output_tokens += len(message.token_ids)
                    yield message
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if replica.channel_epoch == epoch or (task is not None and task.cancelling()):
                raise  # a real cancellation (client gone, stop string), not an aborted replica
            counters.num_failed += 1
            raise NotReady(
                f"engine unavailable: {replica.address} stopped answering health checks "
                f"({replica.health.last_error}); its in-flight requests were aborted"
            ) from None
        except AliseError as error:
            counters.num_failed += 1
            refused = isinstance(error, Overloaded)  # the engine refuses only before its first message
            if isinstance(error, EngineQueueFull):
                replica.queue_full.on_queue_full(str(error))
            if isinstance(error, NotReady):
                replica.health.on_call_failed(str(error))
            raise
        finally:
            if not refused:  # it held a place on the replica, and that place is free now
                replica.queue_full.on_place_freed()
            replica.load.end(in_flight)
            self._replicas.release(replica)

    def _default_seconds_per_token(self) -> float:
        """What a replica without its own rate is charged: the others' median, else a fixed 1 s."""
        measured = self._measured_default_seconds_per_token()
        return UNMEASURED_SECONDS_PER_TOKEN if measured is None else measured

    def _measured_default_seconds_per_token(self) -> float | None:
        """The median reported rate over all replicas, None while none has reported one."""
        rates = [r.load.seconds_per_token for r in self._replicas.replicas.values() if r.load.seconds_per_token]
        return statistics.median(rates) if rates else None

    def _no_replica_reason(self) -> RefusalReason | None:
        """DRAINING when every replica is draining (retry on another gateway or after the restart)."""
        replicas = self._replicas.active()
        if replicas and all(r.health.state == ReplicaState.DRAINING for r in replicas):
            return RefusalReason.DRAINING
        return None

    def _describe_no_replica(self) -> str:
        replicas = self._replicas.active()
        if not replicas:
            return f"no replica of {self.address} has been resolved"
        states = ", ".join(f"{r.address} {r.health.state.value} ({r.health.last_error})" for r in replicas)
        return f"no replica of {self.address} can take the request: {states}"


_STATE_ORDER = {
    ReplicaState.SERVING: 0,
    ReplicaState.UNKNOWN: 1,
    ReplicaState.SUSPECT: 2,
    ReplicaState.DRAINING: 3,
    ReplicaState.DOWN: 4,
}
