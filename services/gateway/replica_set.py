"""The live set of replicas of one peer, kept in step with discovery.

    address appears in discovery   -> a replica is created and started (it begins health checks)
    address disappears             -> the replica retires: it gets no new calls, its in-flight calls
                                      finish (a scaled-down engine drains), then it is closed
    address reappears while retiring -> it is routable again (same channel, same ledger)

Invariant: every replica in `replicas` has been started and not closed; a closed replica is never
handed out again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Generic, Protocol, TypeVar

from services.gateway.replica_discovery import ReplicaDiscovery, Resolve, parse_targets, resolve_target

log = logging.getLogger(__name__)


class Replica(Protocol):
    """What the set needs of a replica (EngineReplica and PredictorReplica both qualify)."""

    address: str
    retiring: bool

    @property
    def num_in_flight(self) -> int: ...

    def start(self) -> None: ...

    async def close(self) -> None: ...


R = TypeVar("R", bound=Replica)


class ReplicaSet(Generic[R]):
    """Replicas of one peer spec (e.g. "engine:50052"), created by `create(address)`."""

    def __init__(
        self,
        spec: str,
        *,
        discovery_interval_s: float,
        create: Callable[[str], R],
        resolve: Resolve = resolve_target,
    ) -> None:
        self.spec = spec  # the peer spec as configured, for messages
        self._create = create
        self.replicas: dict[str, R] = {}  # address -> replica, retiring ones included
        self._closing: set[asyncio.Task[None]] = set()  # closes in progress (kept referenced)
        self._discovery = ReplicaDiscovery(
            parse_targets(spec), interval_s=discovery_interval_s, on_change=self.update, resolve=resolve
        )

    async def start(self) -> None:
        """First lookup (failures are logged; replicas appear at a later lookup), then the loop."""
        await self._discovery.refresh()
        self._discovery.start()

    def update(self, addresses: frozenset[str]) -> None:
        """Adds new addresses, retires vanished ones, revives returning ones."""
        for address in sorted(addresses):
            replica = self.replicas.get(address)
            if replica is None:
                replica = self._create(address)
                self.replicas[address] = replica
                replica.start()
                log.info("replica %s of %s added", address, self.spec)
            elif replica.retiring:
                replica.retiring = False
                log.info("replica %s of %s is back", address, self.spec)
        for address, replica in list(self.replicas.items()):
            if address not in addresses and not replica.retiring:
                replica.retiring = True
                log.info("replica %s of %s removed; closing once idle", address, self.spec)
                self.release(replica)

    def active(self) -> list[R]:
        """Non-retiring replicas in address order."""
        return [self.replicas[a] for a in sorted(self.replicas) if not self.replicas[a].retiring]

    def release(self, replica: R) -> None:
        """Call after a call on `replica` ends: closes it when it is retiring and idle."""
        if not (replica.retiring and replica.num_in_flight == 0):
            return
        if self.replicas.get(replica.address) is not replica:
            return
        del self.replicas[replica.address]
        task = asyncio.get_running_loop().create_task(replica.close(), name=f"close {replica.address}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Stops discovery and closes every replica (in-flight calls are cancelled)."""
        await self._discovery.stop()
        replicas, self.replicas = list(self.replicas.values()), {}
        await asyncio.gather(*(replica.close() for replica in replicas), *self._closing)
