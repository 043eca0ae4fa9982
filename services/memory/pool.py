"""One tier's block pool as a ledger of owners: who holds how many blocks of that tier.

Ownership is kept per owner record, not as a bare counter, so that the swap issue can hold host
blocks per swapped request and release exactly those when the request is restored or finishes:

    BlockPool(tier=HOST, num_blocks_total=8)
      owner (engine "e1", request "r7") -> 3 blocks   ┐
      owner (engine "e2", request "r2") -> 2 blocks   ├─ used = 5
                                                      ┘  free = total - used = 3

free is derived (total - used), so used + free == total holds by construction; what can break, and
what `violations` checks, is every holding > 0 and sum(holdings) <= num_blocks_total (free >= 0).
Plain Python: no grpc, no torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Tier(enum.Enum):
    """Where KV blocks live (mirrors alise.v1.MemoryTier without the UNSPECIFIED value)."""

    DEVICE = "device"  # accelerator memory of one engine (CPU memory for the CPU engine)
    HOST = "host"  # the memory service's shared host tier, where swapped KV lives


@dataclass(frozen=True)
class BlockOwner:
    """Who holds blocks of a tier.

    request_id None means the engine as a whole: the device tier only knows the aggregate an
    engine reports. Per-request records (request_id set) are what swapped requests will hold.
    """

    engine_id: str  # the engine replica the blocks belong to
    request_id: str | None = None  # the request holding them; None = the engine's aggregate


@dataclass(frozen=True)
class TierUsage:
    """Snapshot of one pool. used + free == total whenever the ledger is consistent."""

    tier: Tier  # which tier
    num_blocks_total: int  # capacity of the pool, in blocks
    num_blocks_used: int  # blocks held by some owner
    num_blocks_free: int  # blocks nobody holds
    block_bytes: int  # bytes of one block of this pool

    @property
    def used_bytes(self) -> int:
        """num_blocks_used * block_bytes."""
        return self.num_blocks_used * self.block_bytes


class PoolExhausted(ValueError):
    """A holding would exceed the pool's capacity."""


class BlockPool:
    """Owner -> number of blocks, for one tier of fixed capacity. Not thread-safe (one event loop)."""

    def __init__(self, tier: Tier, num_blocks_total: int, block_bytes: int) -> None:
        if num_blocks_total < 0:
            raise ValueError(f"num_blocks_total must be >= 0, got {num_blocks_total}")
        if block_bytes <= 0:
            raise ValueError(f"block_bytes must be > 0, got {block_bytes}")
        self.tier = tier
        self.num_blocks_total = num_blocks_total
        self.block_bytes = block_bytes
        self._num_blocks_by_owner: dict[BlockOwner, int] = {}

    @property
    def num_blocks_used(self) -> int:
        return sum(self._num_blocks_by_owner.values())

    @property
    def num_blocks_free(self) -> int:
        return self.num_blocks_total - self.num_blocks_used

    def held_by(self, owner: BlockOwner) -> int:
        """Blocks `owner` holds (0 when it holds none)."""
        return self._num_blocks_by_owner.get(owner, 0)

    def owners(self) -> dict[BlockOwner, int]:
        """A copy of the ownership records."""
        return dict(self._num_blocks_by_owner)

    def set_held(self, owner: BlockOwner, num_blocks: int) -> None:
        """Sets what `owner` holds to num_blocks (0 removes the record).

        Raises ValueError for a negative count and PoolExhausted when the other owners' blocks plus
        num_blocks would exceed the capacity; the pool is unchanged when it raises.
        """
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        num_held_by_others = self.num_blocks_used - self.held_by(owner)
        if num_held_by_others + num_blocks > self.num_blocks_total:
            raise PoolExhausted(
                f"{self.tier.value} tier: {owner} cannot hold {num_blocks} blocks, "
                f"{self.num_blocks_total - num_held_by_others} of {self.num_blocks_total} are available"
            )
        if num_blocks == 0:
            self._num_blocks_by_owner.pop(owner, None)
        else:
            self._num_blocks_by_owner[owner] = num_blocks

    def release_engine(self, engine_id: str) -> int:
        """Drops every record of `engine_id` (its aggregate and its requests); returns the blocks freed."""
        doomed = [owner for owner in self._num_blocks_by_owner if owner.engine_id == engine_id]
        return sum(self._num_blocks_by_owner.pop(owner) for owner in doomed)

    def usage(self) -> TierUsage:
        num_used = self.num_blocks_used
        return TierUsage(
            tier=self.tier,
            num_blocks_total=self.num_blocks_total,
            num_blocks_used=num_used,
            num_blocks_free=self.num_blocks_total - num_used,
            block_bytes=self.block_bytes,
        )

    def violations(self, label: str) -> list[str]:
        """Broken invariants of this pool, each a sentence starting with `label`; empty = consistent."""
        found = [
            f"{label}: {owner} holds {num_blocks} blocks (must be > 0)"
            for owner, num_blocks in self._num_blocks_by_owner.items()
            if num_blocks <= 0
        ]
        usage = self.usage()
        if usage.num_blocks_free < 0:
            found.append(f"{label}: {usage.num_blocks_used} blocks used of {usage.num_blocks_total} total")
        return found
