"""The KV ledger: which engines exist, how their device KV pools are used, and the host tier.

Engines register their pool (size and block layout) and report usage periodically. The ledger keeps
one `BlockPool` per tier: a device pool per engine (whose single record is the engine's reported
aggregate) and one shared host pool (where the swap issue will hold blocks per swapped request).

    engine "e1" --RegisterEngine--> device pool e1: total 512, block_bytes 2 MiB
                --ReportUsage(seq 7, used 300, free 212)--> record (e1, None) -> 300
    host pool: total = host_tier_capacity_bytes // host_tier_block_bytes (0 until swapping lands)

Invariants (`check_invariants` lists every broken one; empty = consistent):
- in every pool, used + free == total with 0 <= used <= total and every holding > 0;
- an engine's last accepted report satisfies used + free == its registered device blocks, and its
  device pool holds exactly the reported used blocks;
- the host tier holds blocks only for registered engines.

Reports carry the engine's sequence_number: one not greater than the last accepted one is stale (late
or duplicated) and ignored. Plain Python (no grpc, no torch); not thread-safe: the service calls it
from one asyncio event loop, and no method awaits, so each call is atomic there.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Callable

from services.memory.pool import BlockOwner, BlockPool, Tier, TierUsage


class LedgerError(ValueError):
    """A registration or report the ledger refuses; the message says why."""


class UnknownEngine(LedgerError):
    """The engine_id is not registered."""


class KvDtype(enum.Enum):
    """Element type of stored KV."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"
    INT4 = "int4"


@dataclass(frozen=True)
class KvBlockLayout:
    """Shape of one KV block; block_bytes is authoritative for transfer and capacity sizes."""

    block_size_tokens: int  # tokens per block
    num_layers: int  # transformer layers (each block spans all layers)
    num_kv_heads: int  # key/value heads per layer
    head_dim: int  # elements per head
    dtype: KvDtype  # element type
    block_bytes: int  # bytes of one block across all layers, keys and values

    def __post_init__(self) -> None:
        if self.block_bytes <= 0:
            raise LedgerError(f"layout.block_bytes must be > 0, got {self.block_bytes}")
        if self.block_size_tokens <= 0:
            raise LedgerError(f"layout.block_size_tokens must be > 0, got {self.block_size_tokens}")


@dataclass(frozen=True)
class EngineRegistration:
    """What an engine announces about itself and its device KV pool."""

    engine_id: str  # stable id of the engine replica
    address: str  # host:port the engine serves gRPC on
    model_name: str  # name of the loaded model
    num_device_blocks: int  # blocks in the engine's device KV pool
    layout: KvBlockLayout  # layout of each block

    def __post_init__(self) -> None:
        if not self.engine_id:
            raise LedgerError("engine_id must not be empty")
        if self.num_device_blocks <= 0:
            raise LedgerError(f"num_device_blocks must be > 0, got {self.num_device_blocks}")


@dataclass(frozen=True)
class UsageReport:
    """One periodic usage report of an engine's device pool."""

    engine_id: str  # the reporting engine
    num_device_blocks_used: int  # device blocks held by requests
    num_device_blocks_free: int  # device blocks free
    num_requests: int  # live requests holding blocks
    sequence_number: int  # engine's increasing report counter

    def __post_init__(self) -> None:
        if not self.engine_id:
            raise LedgerError("engine_id must not be empty")
        for name in ("num_device_blocks_used", "num_device_blocks_free", "num_requests", "sequence_number"):
            if getattr(self, name) < 0:  # only a Python caller can get here; protobuf fields are unsigned
                raise LedgerError(f"{name} must be >= 0, got {getattr(self, name)}")


class ReportOutcome(enum.Enum):
    """What the ledger did with a usage report."""

    ACCEPTED = "accepted"  # applied to the ledger
    STALE = "stale"  # sequence_number not newer than the last accepted one: ignored
    UNKNOWN_ENGINE = "unknown_engine"  # engine not registered: it should register again


@dataclass(frozen=True)
class EngineUsage:
    """One engine's entry in a ledger snapshot."""

    registration: EngineRegistration  # as last registered
    device: TierUsage  # its device pool as last reported (all free before its first report)
    num_requests: int  # live requests holding blocks, as last reported
    report_age_s: float  # seconds since the last accepted report (since registration before one)
    has_reported: bool  # False until the first report after (re-)registration is accepted
    is_stale: bool  # report_age_s > the ledger's stale_after_s: the engine may be gone


@dataclass(frozen=True)
class LedgerSnapshot:
    """The whole ledger at one instant."""

    engines: tuple[EngineUsage, ...]  # sorted by engine_id
    host: TierUsage  # the shared host tier
    violations: tuple[str, ...]  # broken invariants; empty when consistent

    @property
    def is_consistent(self) -> bool:
        return not self.violations


@dataclass
class _EngineEntry:
    """Mutable per-engine state, private to the ledger."""

    registration: EngineRegistration
    device_pool: BlockPool
    last_report: UsageReport | None  # last accepted report since (re-)registration
    last_change_at_s: float  # clock time of the last accepted report, or of registration


class KvLedger:
    """Registered engines, their device pools, and the shared host tier."""

    def __init__(
        self,
        *,
        host_tier_capacity_bytes: int,
        host_tier_block_bytes: int,
        stale_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if host_tier_capacity_bytes < 0:
            raise ValueError(f"host_tier_capacity_bytes must be >= 0, got {host_tier_capacity_bytes}")
        if host_tier_block_bytes <= 0:
            raise ValueError(f"host_tier_block_bytes must be > 0, got {host_tier_block_bytes}")
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s}")
        # A capacity that is not a multiple of the block size leaves the remainder unused.
        num_host_blocks = host_tier_capacity_bytes // host_tier_block_bytes
        self._host_pool = BlockPool(Tier.HOST, num_host_blocks, host_tier_block_bytes)
        self._stale_after_s = stale_after_s
        self._clock = clock
        self._engines: dict[str, _EngineEntry] = {}

    def register(self, registration: EngineRegistration) -> bool:
        """Adds or replaces an engine; returns True when engine_id was already registered.

        Re-registration (a restarted engine, or a retried call) replaces address, model and layout,
        and starts usage afresh: the last report is forgotten, so the sequence counter may restart.
        The engine's host-tier records are dropped when its block layout changed (they no longer
        describe its blocks) and kept otherwise.
        """
        previous = self._engines.get(registration.engine_id)
        if previous is not None and previous.registration.layout != registration.layout:
            self._host_pool.release_engine(registration.engine_id)
        device_pool = BlockPool(Tier.DEVICE, registration.num_device_blocks, registration.layout.block_bytes)
        self._engines[registration.engine_id] = _EngineEntry(registration, device_pool, None, self._clock())
        return previous is not None

    def unregister(self, engine_id: str) -> bool:
        """Removes an engine and releases all its blocks in every tier; False when it was unknown."""
        entry = self._engines.pop(engine_id, None)
        if entry is None:
            return False
        self._host_pool.release_engine(engine_id)
        return True

    def report(self, report: UsageReport) -> ReportOutcome:
        """Applies a usage report unless the engine is unknown or the report is stale.

        Raises LedgerError (ledger unchanged) when used + free differs from the registered pool size.
        """
        entry = self._engines.get(report.engine_id)
        if entry is None:
            return ReportOutcome.UNKNOWN_ENGINE
        last = entry.last_report
        if last is not None and report.sequence_number <= last.sequence_number:
            return ReportOutcome.STALE
        num_total = entry.registration.num_device_blocks
        if report.num_device_blocks_used + report.num_device_blocks_free != num_total:
            raise LedgerError(
                f"engine {report.engine_id!r} reported {report.num_device_blocks_used} used + "
                f"{report.num_device_blocks_free} free device blocks, but registered {num_total}"
            )
        entry.device_pool.set_held(BlockOwner(report.engine_id), report.num_device_blocks_used)
        entry.last_report = report
        entry.last_change_at_s = self._clock()
        return ReportOutcome.ACCEPTED

    def silent_engines(self, silent_for_s: float) -> list[str]:
        """Engines with no accepted report (nor registration) for longer than silent_for_s, sorted."""
        now_s = self._clock()
        return sorted(
            engine_id for engine_id, entry in self._engines.items() if now_s - entry.last_change_at_s > silent_for_s
        )

    def set_host_blocks(self, owner: BlockOwner, num_blocks: int) -> None:
        """Sets the host-tier blocks `owner` holds (0 releases them): the primitive swap plans use.

        Raises UnknownEngine for an unregistered engine and pool.PoolExhausted beyond capacity.
        """
        if owner.engine_id not in self._engines:
            raise UnknownEngine(f"engine {owner.engine_id!r} is not registered")
        self._host_pool.set_held(owner, num_blocks)

    def host_owners(self) -> dict[BlockOwner, int]:
        """Host-tier blocks per owner (a copy)."""
        return self._host_pool.owners()

    def registration(self, engine_id: str) -> EngineRegistration | None:
        entry = self._engines.get(engine_id)
        return None if entry is None else entry.registration

    def host_usage(self) -> TierUsage:
        return self._host_pool.usage()

    def snapshot(self) -> LedgerSnapshot:
        now_s = self._clock()
        engines = tuple(self._engine_usage(self._engines[key], now_s) for key in sorted(self._engines))
        return LedgerSnapshot(engines, self._host_pool.usage(), tuple(self.check_invariants()))

    def _engine_usage(self, entry: _EngineEntry, now_s: float) -> EngineUsage:
        report_age_s = max(0.0, now_s - entry.last_change_at_s)
        return EngineUsage(
            registration=entry.registration,
            device=entry.device_pool.usage(),
            num_requests=entry.last_report.num_requests if entry.last_report else 0,
            report_age_s=report_age_s,
            has_reported=entry.last_report is not None,
            is_stale=report_age_s > self._stale_after_s,
        )

    def check_invariants(self) -> list[str]:
        """Every broken invariant as a sentence; an empty list means the ledger is consistent."""
        violations = self._host_pool.violations("host tier")
        for owner in self._host_pool.owners():
            if owner.engine_id not in self._engines:
                violations.append(f"host tier: {owner} belongs to unregistered engine {owner.engine_id!r}")
        for engine_id, entry in self._engines.items():
            violations.extend(_engine_violations(engine_id, entry))
        return violations


def _engine_violations(engine_id: str, entry: _EngineEntry) -> list[str]:
    label = f"engine {engine_id!r} device tier"
    pool, registration = entry.device_pool, entry.registration
    violations = pool.violations(label)
    if pool.num_blocks_total != registration.num_device_blocks:
        violations.append(
            f"{label}: pool has {pool.num_blocks_total} blocks, registered {registration.num_device_blocks}"
        )
    foreign = [owner for owner in pool.owners() if owner.engine_id != engine_id]
    if foreign:
        violations.append(f"{label}: held by other engines' records {foreign}")
    report = entry.last_report
    num_reported_used = report.num_device_blocks_used if report else 0
    if pool.num_blocks_used != num_reported_used:
        violations.append(f"{label}: pool holds {pool.num_blocks_used} blocks, last report says {num_reported_used}")
    num_total = registration.num_device_blocks
    if report and report.num_device_blocks_used + report.num_device_blocks_free != num_total:
        violations.append(f"{label}: last report used + free != {num_total} total")
    return violations
