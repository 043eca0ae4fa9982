"""Health and load of the gateway's engine and predictor replicas, as Prometheus gauges.

Read at scrape time from the pools' own reports (what the gateway's health checks and routing
ledger already know): no extra call to any replica. The pools belong to the event loop, so the
reports are taken on it (`run_on_loop`), whichever thread serves the scrape.

    alise:engine_replica_state{replica, state}     1 for the replica's current state, 0 for the others
    alise:engine_replica_up{replica}                1 when SERVING (routable), else 0
    alise:engine_replica_requests_in_flight{replica}, alise:engine_replica_outstanding_work_seconds{replica}
    alise:predictor_replica_state{replica, state}, alise:predictor_replica_up{replica}
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.metrics_server import run_on_loop
from services.gateway.engine_replica import ReplicaReport
from services.gateway.peers import GatewayPeers
from services.gateway.predictor_pool import PredictorReplicaReport
from services.gateway.replica_health import ReplicaState


@dataclass(frozen=True)
class ReplicaReports:
    """Both pools' reports at one instant."""

    engines: list[ReplicaReport]
    predictors: list[PredictorReplicaReport]


class ReplicaCollector(Collector):
    """Per-replica gauges of both pools."""

    def __init__(self, peers: GatewayPeers, loop: asyncio.AbstractEventLoop) -> None:
        self._peers = peers
        self._loop = loop  # the loop the pools run on

    def _take_reports(self) -> ReplicaReports:
        predictors = self._peers.predictors
        return ReplicaReports(self._peers.engines.reports(), predictors.reports() if predictors else [])

    def collect(self) -> Iterator[Metric]:
        reports = run_on_loop(self._loop, self._take_reports)
        if reports is None:  # loop closed or stuck: no series rather than a hung scrape
            return
        yield from _state_metrics("engine", [(r.address, r.state) for r in reports.engines])
        in_flight = GaugeMetricFamily(
            "alise:engine_replica_requests_in_flight",
            "This gateway's unfinished requests on an engine replica.",
            labels=["replica"],
        )
        work = GaugeMetricFamily(
            "alise:engine_replica_outstanding_work_seconds",
            "Predicted outstanding work of an engine replica (what least-work routing compares).",
            labels=["replica"],
        )
        for report in reports.engines:
            in_flight.add_metric([report.address], report.num_in_flight)
            work.add_metric([report.address], report.outstanding_work_s)
        yield in_flight
        yield work
        yield from _state_metrics("predictor", [(r.address, r.state) for r in reports.predictors])


def _state_metrics(kind: str, states: list[tuple[str, str]]) -> Iterator[Metric]:
    """`alise:<kind>_replica_state` (one series per state) and `alise:<kind>_replica_up`."""
    state = GaugeMetricFamily(
        f"alise:{kind}_replica_state",
        f"1 for the {kind} replica's health state as this gateway's checks see it, 0 for the other states.",
        labels=["replica", "state"],
    )
    up = GaugeMetricFamily(
        f"alise:{kind}_replica_up", f"1 when the {kind} replica is serving, else 0.", labels=["replica"]
    )
    for address, current in states:
        for candidate in ReplicaState:
            state.add_metric([address, candidate.value], 1 if candidate.value == current else 0)
        up.add_metric([address], 1 if current == ReplicaState.SERVING.value else 0)
    yield state
    yield up
