"""The memory service's Prometheus metrics: its ledger's tiers and its swap counters.

Everything is read at scrape time from the service's own state. That state belongs to the event
loop (the ledger is not thread-safe), so the collector takes one snapshot on the loop per scrape
(`run_on_loop`) and formats it on the HTTP thread.

    tier="host"                 the shared host tier (swapped KV of every engine): no engine label
    tier="device", engine=ID    each registered engine's device pool, as it last reported
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.common.metrics_server import run_on_loop
from services.memory.eviction_policy import KvCodec
from services.memory.ledger import LedgerSnapshot
from services.memory.pool import TierUsage
from services.memory.swap_manager import SwapCounters, SwapManager


@dataclass(frozen=True)
class MemoryStateSnapshot:
    """The service's state at one instant, taken on the event loop."""

    ledger: LedgerSnapshot  # tiers and engines
    violations: tuple[str, ...]  # ledger + host tier invariants broken now; empty = consistent
    counters: SwapCounters  # a copy of the swap counters


def take_snapshot(swaps: SwapManager) -> MemoryStateSnapshot:
    """Event-loop thread only."""
    return MemoryStateSnapshot(swaps.ledger.snapshot(), tuple(swaps.violations()), copy.deepcopy(swaps.counters))


def memory_registry(swaps: SwapManager, loop: asyncio.AbstractEventLoop) -> CollectorRegistry:
    """A fresh registry holding the memory service's collector."""
    registry = CollectorRegistry()
    registry.register(MemoryStateCollector(swaps, loop))
    return registry


class MemoryStateCollector(Collector):
    """Tier gauges, ledger consistency and swap counters, from one snapshot per scrape."""

    def __init__(self, swaps: SwapManager, loop: asyncio.AbstractEventLoop) -> None:
        self._swaps = swaps
        self._loop = loop  # the loop that owns the ledger

    def collect(self) -> Iterator[Metric]:
        snapshot = run_on_loop(self._loop, lambda: take_snapshot(self._swaps))
        if snapshot is None:  # loop closed or stuck: no series rather than a hung scrape
            return
        yield from _tier_metrics(snapshot.ledger)
        yield from _engine_metrics(snapshot.ledger)
        yield GaugeMetricFamily(
            "alise:memory_ledger_consistent",
            "1 when every ledger invariant holds (used + free == total, ...), else 0.",
            value=0 if snapshot.violations else 1,
        )
        yield GaugeMetricFamily(
            "alise:memory_ledger_violations", "Ledger invariants broken now.", value=len(snapshot.violations)
        )
        yield from _swap_counters(snapshot.counters)


def _tier_metrics(ledger: LedgerSnapshot) -> Iterator[Metric]:
    labels = ["tier", "engine"]
    used = GaugeMetricFamily("alise:kv_tier_used_bytes", "Bytes held in a KV tier.", labels=labels)
    free = GaugeMetricFamily("alise:kv_tier_free_bytes", "Bytes free in a KV tier.", labels=labels)
    total = GaugeMetricFamily("alise:kv_tier_total_bytes", "Capacity of a KV tier.", labels=labels)
    tiers: list[tuple[str, TierUsage]] = [("", ledger.host)]
    tiers += [(engine.registration.engine_id, engine.device) for engine in ledger.engines]
    for engine_id, usage in tiers:
        label_values = [usage.tier.value, engine_id]
        used.add_metric(label_values, usage.num_blocks_used * usage.block_bytes)
        free.add_metric(label_values, usage.num_blocks_free * usage.block_bytes)
        total.add_metric(label_values, usage.num_blocks_total * usage.block_bytes)
    yield from (used, free, total)


def _engine_metrics(ledger: LedgerSnapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "alise:memory_registered_engines", "Engines registered with the ledger.", value=len(ledger.engines)
    )
    yield GaugeMetricFamily(
        "alise:memory_stale_engines",
        "Registered engines silent for longer than --stale-after-s.",
        value=sum(1 for engine in ledger.engines if engine.is_stale),
    )
    age = GaugeMetricFamily(
        "alise:memory_engine_report_age_seconds",
        "Seconds since an engine's last accepted usage report.",
        labels=["engine"],
    )
    for engine in ledger.engines:
        age.add_metric([engine.registration.engine_id], engine.report_age_s)
    yield age


def _swap_counters(counters: SwapCounters) -> Iterator[Metric]:
    swaps = CounterMetricFamily(
        "alise:memory_planned_swaps", "Preemption victims planned to swap to the host tier, by codec.", labels=["codec"]
    )
    for codec in KvCodec:
        swaps.add_metric([codec.value], counters.num_swapped_by_codec[codec])
    yield swaps
    yield _counter(
        "memory_eviction_plans", "PlanEviction events (one per engine step with victims).", counters.num_plans
    )
    yield _counter("memory_planned_recomputes", "Preemption victims planned to recompute.", counters.num_recompute)
    yield _counter("memory_dropped_swaps", "Swapped requests dropped to recompute to make room.", counters.num_dropped)
    restores = CounterMetricFamily("alise:memory_restores", "BeginRestore answers per request.", labels=["outcome"])
    restores.add_metric(["granted"], counters.num_restores_granted)
    restores.add_metric(["refused"], counters.num_restores_refused)
    yield restores
    streamed = CounterMetricFamily(
        "alise:memory_streamed_bytes",
        "Swapped KV bytes streamed over gRPC (engines without the shared-memory region).",
        labels=["direction"],
    )
    streamed.add_metric(["in"], counters.num_streamed_bytes_in)
    streamed.add_metric(["out"], counters.num_streamed_bytes_out)
    yield streamed


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"alise:{name}", documentation, value=value)
