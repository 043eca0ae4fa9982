"""The engine thread's synchronous client of the memory service's swap RPCs.

Synchronous because the scheduler runs on the engine thread and an eviction must be settled before
the step's model run overwrites the victims' blocks. One call per event (a preemption step, a
prefetch batch, a restore batch), never per token.

A dead or slow memory service is a fallback, not an outage: every call has a short deadline, a
failed call returns None (the offloader then recomputes), and after a failure the client stays
quiet for `backoff_s` (calls return None at once) so a down service costs one timeout, not one
per step.

It is the edge of the swap RPCs: it takes and returns swap_plan objects (converted by swap_pb).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

import grpc

from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.common.server import PEER_CHANNEL_OPTIONS
from services.common.tls import TlsFiles, secure_or_insecure_sync_channel
from services.engine.kv_offload.swap_pb import candidate_to_pb, decision_from_pb, grant_from_pb, quality_to_pb
from services.engine.kv_offload.swap_plan import CodecQuality, RestoreGrant, SwapCandidate, SwapDecision

log = logging.getLogger(__name__)

T = TypeVar("T")

CALL_TIMEOUT_S = 1.0  # a plan must not hold the engine longer than about one slow step
BACKOFF_S = 2.0  # after a failure, the memory service is not asked again for this long


class MemoryClient:
    """Swap calls with deadlines and a back-off; thread-safe (the engine and prefetch threads use it)."""

    def __init__(
        self,
        address: str,
        engine_id: str,
        *,
        timeout_s: float = CALL_TIMEOUT_S,
        backoff_s: float = BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
        tls: TlsFiles | None = None,
    ) -> None:
        self.engine_id = engine_id
        # mutual TLS when tls has a CA; fast reconnect to a restarted memory service
        self.channel = secure_or_insecure_sync_channel(address, tls, PEER_CHANNEL_OPTIONS)
        self.stub = rpc.MemoryServiceStub(self.channel)
        self.timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._clock = clock
        self._quiet_until_s = 0.0
        self._lock = threading.Lock()
        self.num_failed_calls = 0

    @property
    def available(self) -> bool:
        """False while backing off after a failed call."""
        return self._clock() >= self._quiet_until_s

    def plan(self, victims: list[SwapCandidate], qualities: list[CodecQuality]) -> list[SwapDecision] | None:
        """One decision per victim, in order; None when the call failed (every victim recomputes)."""
        request = pb.PlanEvictionRequest(
            engine_id=self.engine_id,
            victims=[candidate_to_pb(v) for v in victims],
            codec_qualities=[quality_to_pb(q) for q in qualities],
        )
        reply = self._call("PlanEviction", lambda: self.stub.PlanEviction(request, timeout=self.timeout_s))
        return None if reply is None else [decision_from_pb(d) for d in reply.decisions]

    def commit(self, request_ids: list[str]) -> set[str] | None:
        request = pb.CommitSwapOutRequest(engine_id=self.engine_id, request_ids=request_ids)
        reply = self._call("CommitSwapOut", lambda: self.stub.CommitSwapOut(request, timeout=self.timeout_s))
        return None if reply is None else set(reply.committed_request_ids)

    def begin_restore(self, request_ids: list[str]) -> list[RestoreGrant] | None:
        request = pb.BeginRestoreRequest(engine_id=self.engine_id, request_ids=request_ids)
        reply = self._call("BeginRestore", lambda: self.stub.BeginRestore(request, timeout=self.timeout_s))
        return None if reply is None else [grant_from_pb(g) for g in reply.grants]

    def release(self, request_ids: list[str]) -> bool:
        request = pb.ReleaseSwappedRequest(engine_id=self.engine_id, request_ids=request_ids)
        return (
            self._call("ReleaseSwapped", lambda: self.stub.ReleaseSwapped(request, timeout=self.timeout_s)) is not None
        )

    def close(self) -> None:
        self.channel.close()

    def _call(self, name: str, call: Callable[[], T]) -> T | None:
        if not self.available:
            return None
        try:
            return call()
        except grpc.RpcError as error:
            with self._lock:
                self.num_failed_calls += 1
                self._quiet_until_s = self._clock() + self._backoff_s
            log.warning(
                "memory service %s failed (%s: %s); recomputing instead for %.1f s",
                name,
                error.code().name,
                error.details(),
                self._backoff_s,
            )
            return None
