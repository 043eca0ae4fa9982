"""One engine replica as the gateway sees it: channel, health checks, load ledger, counters.

Each replica runs its own check loop (a slow replica never delays the checks of the others):

    every health.interval_s:  grpc.health.v1 Check("alise.v1.EngineService")  -> HealthTracker
                              then, when SERVING, GetStats                    -> ReplicaLoadTracker

When the tracker declares the replica DOWN (max_failures checks in a row unanswered), its channel is
replaced by a fresh one and the old one closed: every stream still open on it ends at once (the pool
turns that into UNAVAILABLE for the client), instead of waiting on a host that may never answer.
`channel_epoch` counts those replacements so a stream can tell it was aborted this way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import grpc

from services.gateway.engine_client import EngineClient
from services.gateway.engine_load import ReplicaLoadTracker
from services.gateway.engine_saturation import QueueFullMemory
from services.gateway.replica_health import (
    HealthSettings,
    HealthTracker,
    PeriodicallyChecked,
    ReplicaState,
    check_serving,
    describe_rpc_error,
)

log = logging.getLogger(__name__)

ENGINE_SERVICE_NAME = "alise.v1.EngineService"
ChannelFactory = Callable[[str], grpc.aio.Channel]


@dataclass
class ReplicaCounters:
    """What the gateway sent to one replica since it was added (for benchmarks and logs)."""

    num_routed: int = 0  # requests sent to it (retries on another replica count there)
    num_failed: int = 0  # of those, ended by an error (client cancellations excluded)
    routed_predicted_tokens: float = 0.0  # sum of the predicted output tokens of routed requests
    routed_predicted_work_s: float = 0.0  # the same in seconds, at the rate known when each was routed
    num_routed_without_rate: int = 0  # routed before any replica had reported a rate (not in work_s)
    num_output_tokens: int = 0  # output tokens streamed back from it


@dataclass(frozen=True)
class ReplicaReport:
    """A snapshot of one replica, for tests, benchmarks and logs."""

    address: str  # host:port
    state: str  # a ReplicaState value
    retiring: bool  # removed from discovery, finishing its in-flight requests
    num_in_flight: int  # this gateway's unfinished requests on it
    outstanding_tokens: float  # predicted outstanding output tokens (engine_load)
    outstanding_work_s: float  # the same in seconds (what least-work routing compares)
    seconds_per_token: float | None  # the engine's drain rate, None until reported
    last_error: str  # why it last failed ("" = never)
    counters: ReplicaCounters  # a copy of its counters


class EngineReplica(PeriodicallyChecked):
    """An engine replica; created and started by the pool's ReplicaSet."""

    def __init__(self, address: str, *, make_channel: ChannelFactory, health: HealthSettings) -> None:
        self.address = address  # host:port of this replica
        self.retiring = False  # set by ReplicaSet when discovery no longer lists it
        self.health = HealthTracker(health.max_failures)
        self.load = ReplicaLoadTracker()
        self.queue_full = QueueFullMemory(address, max_age_s=health.interval_s)  # its last queue-full refusal
        self.counters = ReplicaCounters()
        self.channel_epoch = 0  # bumped each time the channel is replaced after the replica went DOWN
        self._settings = health
        self._make_channel = make_channel
        self._channel = make_channel(address)
        self.client = EngineClient(self._channel, address)

    @property
    def num_in_flight(self) -> int:
        return self.load.num_in_flight

    async def check_once(self) -> None:
        """One health check, then (when SERVING) one stats poll."""
        timeout_s = self._settings.timeout_s
        try:
            serving = await check_serving(self._channel, ENGINE_SERVICE_NAME, timeout_s)
        except grpc.aio.AioRpcError as error:
            await self._on_check_failed(describe_rpc_error(error))
            return
        if serving and self.health.state != ReplicaState.SERVING:
            log.info("engine %s is serving", self.address)
        self.health.on_answer(serving)
        if not serving:
            return
        mine_at_poll = self.load.mine_tokens()
        try:
            stats = await self.client.get_stats(timeout_s)
        except grpc.aio.AioRpcError as error:  # no stats: route on this gateway's ledger alone
            log.debug("GetStats on %s failed (%s)", self.address, describe_rpc_error(error))
            return
        self.load.on_stats(
            stats.predicted_outstanding_tokens,
            stats.predicted_outstanding_work_s,
            mine_at_poll,
            stats.seconds_per_output_token,
            stats.max_num_seqs,
        )

    async def _on_check_failed(self, reason: str) -> None:
        if not self.health.on_failure(reason):
            return
        log.warning(
            "engine %s is down (%d health checks failed: %s); aborting its %d in-flight request(s)",
            self.address,
            self.health.num_consecutive_failures,
            reason,
            self.num_in_flight,
        )
        old_channel = self._channel
        self._channel = self._make_channel(self.address)
        self.client = EngineClient(self._channel, self.address)
        self.channel_epoch += 1
        await old_channel.close()

    def report(self, default_seconds_per_token: float) -> ReplicaReport:
        counters = self.counters
        return ReplicaReport(
            address=self.address,
            state=self.health.state.value,
            retiring=self.retiring,
            num_in_flight=self.num_in_flight,
            outstanding_tokens=self.load.outstanding_tokens(),
            outstanding_work_s=self.load.outstanding_work_s(default_seconds_per_token),
            seconds_per_token=self.load.seconds_per_token,
            last_error=self.health.last_error,
            counters=ReplicaCounters(**vars(counters)),
        )
