"""Finding every replica of a peer service behind the addresses the gateway was given.

A peer spec is a comma-separated list of `host:port` entries; each entry is resolved to all of its
addresses, and every address is one replica:

    "engine:50052"                   -> every A record of `engine`: a compose service scaled with
                                        `--scale engine=3`, or a Kubernetes headless Service
    "10.0.0.5:50052,10.0.0.6:50052"  -> those two replicas (an IP literal resolves to itself)
    "127.0.0.1:50052"                -> one replica (what `alise up` passes)

Names are re-resolved every `interval_s`, so replicas added or removed at run time are picked up.
IPv4 answers are preferred: a name with A records uses only those (so `localhost` is one replica,
not 127.0.0.1 plus ::1); AAAA records are used only for names without any A record.

Invariant: a lookup that fails keeps that entry's previous answer. A DNS hiccup must not empty the
pool; replicas that really vanished stop answering health checks and are skipped anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Awaitable, Callable

from services.common.flags import is_host_port

log = logging.getLogger(__name__)

TARGET_SEPARATOR = ","


@dataclass(frozen=True)
class PeerTarget:
    """One `host:port` entry of a peer spec."""

    host: str  # DNS name or IP literal (IPv6 without brackets)
    port: int  # TCP port, 1..65535

    @property
    def spec(self) -> str:
        """The entry as written, for messages."""
        return format_address(self.host, self.port)


def format_address(host: str, port: int) -> str:
    """`host:port`, with IPv6 literals in brackets (`[::1]:50052`), as gRPC targets want them."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_targets(spec: str) -> tuple[PeerTarget, ...]:
    """Splits a peer spec into targets; raises ValueError naming the first bad entry.

    An empty spec gives no targets (the peer is not configured). Duplicates are kept once.
    """
    targets: list[PeerTarget] = []
    for entry in (part.strip() for part in spec.split(TARGET_SEPARATOR)):
        if not entry and not spec.strip():
            continue
        if not is_host_port(entry):
            raise ValueError(f"expected host:port entries separated by commas, got {entry!r} in {spec!r}")
        host, _, port = entry.rpartition(":")
        target = PeerTarget(host.strip("[]"), int(port))
        if target not in targets:
            targets.append(target)
    return tuple(targets)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve_target(target: PeerTarget) -> frozenset[str]:
    """All replica addresses of one target (IPv4 preferred); raises OSError when the lookup fails."""
    if is_ip_literal(target.host):
        return frozenset({target.spec})
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    ipv4 = {info[4][0] for info in infos if info[0] == socket.AF_INET}
    hosts = ipv4 or {info[4][0] for info in infos if info[0] == socket.AF_INET6}
    if not hosts:
        raise OSError(f"{target.host} has no A or AAAA record")
    return frozenset(format_address(host, target.port) for host in hosts)


Resolve = Callable[[PeerTarget], Awaitable[frozenset[str]]]


class ReplicaDiscovery:
    """Keeps the replica set of one peer spec current and reports every change to `on_change`.

    `on_change` receives the full set of addresses (never empty once any lookup succeeded) and is
    called on the event loop, once at `refresh()` and again whenever the set changes.
    """

    def __init__(
        self,
        targets: tuple[PeerTarget, ...],
        *,
        interval_s: float,
        on_change: Callable[[frozenset[str]], None],
        resolve: Resolve = resolve_target,
    ) -> None:
        self._targets = targets
        self._interval_s = interval_s  # seconds between two lookups of every name
        self._on_change = on_change
        self._resolve = resolve  # lookup of one target; injectable for tests
        self._answers: dict[PeerTarget, frozenset[str]] = {}  # last successful answer per target
        self._current: frozenset[str] | None = None  # last set reported to on_change
        self._task: asyncio.Task[None] | None = None

    @property
    def addresses(self) -> frozenset[str]:
        """The replica addresses known now (empty before the first successful lookup)."""
        return self._current or frozenset()

    async def refresh(self) -> frozenset[str]:
        """Resolves every target once; reports the set when it changed (or on the first call)."""
        answers = await asyncio.gather(*(self._resolve(t) for t in self._targets), return_exceptions=True)
        for target, answer in zip(self._targets, answers):
            if isinstance(answer, BaseException):
                log.warning(
                    "cannot resolve %s (%s); keeping its last %d address(es)",
                    target.spec,
                    answer,
                    len(self._answers.get(target, ())),
                )
                continue
            self._answers[target] = answer
        addresses = frozenset().union(*self._answers.values()) if self._answers else frozenset()
        if addresses != self._current:
            if self._current is not None:
                log.info("replicas of %s now: %s", self.spec, ", ".join(sorted(addresses)) or "none")
            self._current = addresses
            self._on_change(addresses)
        return addresses

    @property
    def spec(self) -> str:
        return TARGET_SEPARATOR.join(target.spec for target in self._targets)

    def start(self) -> None:
        """Starts re-resolving every interval_s in the background (IP-only specs never change)."""
        if self._resolve is resolve_target and all(is_ip_literal(t.host) for t in self._targets):
            return
        self._task = asyncio.create_task(self._loop(), name=f"discovery {self.spec}")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - discovery must outlive any single bad answer
                log.exception("replica discovery of %s failed; retrying", self.spec)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
