"""The engine's KvEvictionHandler: negotiates each preemption event with the memory service and
moves the KV bytes.

    evict (engine thread, inside schedule(), before the model overwrites the freed blocks):
        PlanEviction(all victims, their sizes and measured costs per codec)   one call per event
        for each SWAP decision: encode blocks (kv_codec) -> transport.write into its slots
        CommitSwapOut(written ids)                       (the streamed transport commits itself)
    prefetch (a background thread, ahead of the request's turn):
        BeginRestore(new ids) -> transport.read -> bytes staged in engine memory
    ensure_restorable (engine thread, at admission): waits for the staged bytes (normally ready)
    restore (engine thread, before the model runs): decode staged bytes into the new blocks;
        ReleaseSwapped in the background

Every failure (memory service down or slow, transfer error, KV dropped for room) ends in
recompute: `evict` leaves that victim out of the saved set, `ensure_restorable` says False. The
request itself is never lost, and its host slots are released on every path (restore, discard).
No protobuf here: the memory client speaks swap_plan objects, and the registration's host region is
handed to the transport as it came (host_transport maps it).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from services.engine.kv_cache import PagedKvCache
from services.engine.kv_offload.host_transport import HostRegionMessage, HostTransport, TransferFailed, open_transport
from services.engine.kv_offload.kv_codec import KvCodec, decode_blocks, encode_blocks, encoded_size_bytes
from services.engine.kv_offload.memory_client import MemoryClient
from services.engine.kv_offload.swap_measurements import SwapMeasurements
from services.engine.kv_offload.swap_plan import CodecCost, RestoreGrant, SwapCandidate, SwapDecision
from services.engine.request import Request
from services.engine.scheduler.kv_eviction import EvictedKv, KvRestore

log = logging.getLogger(__name__)

PREFETCH_WAIT_S = 5.0  # longest an admission waits for a prefetch before recomputing instead


@dataclass(frozen=True)
class SavedKv:
    """Where one swapped request's KV is."""

    codec: KvCodec  # how its bytes encode the KV
    slot_ids: tuple[int, ...]  # its host slots, in byte order
    size_bytes: int  # encoded bytes
    num_blocks: int  # device blocks it spans


class KvOffloader:
    """Swap-capable eviction handler of one engine; called on the engine thread only."""

    saves_kv = True

    def __init__(self, cache: PagedKvCache, client: MemoryClient) -> None:
        self.cache = cache
        self.client = client
        self.measurements = SwapMeasurements()
        self._region: HostRegionMessage | None = None  # set by the registration (another thread)
        self._transport: HostTransport | None = None
        self._transport_region: HostRegionMessage | None = None  # the region _transport maps
        self._saved: dict[str, SavedKv] = {}
        self._prefetching: dict[str, Future] = {}  # request id -> Future[uint8 tensor | None]
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-prefetch")
        self._pending_releases: list[Future] = []  # background ReleaseSwapped calls not yet done
        # Ids whose host slots are not known to be released: a failed ReleaseSwapped (memory service
        # slow, down, or in its backoff) keeps them here until a later call succeeds. Guarded by the
        # lock: the background thread and the engine thread both touch it.
        self._unreleased: set[str] = set()
        self._unreleased_lock = threading.Lock()

    def attach_region(self, region: HostRegionMessage) -> None:
        """The memory service (re)registered us with this region; the next eviction maps it."""
        self._region = region

    # -- eviction ---------------------------------------------------------------------------------

    def evict(self, victims: list[EvictedKv]) -> set[str]:
        transport = self._current_transport()
        if transport is None or not self.client.available:
            return set()
        self._finish_releases()  # a late release of a victim's earlier swap must not free its new one
        with self._unreleased_lock:  # nor a retried one: such a victim recomputes this time
            victims = [v for v in victims if v.request.request_id not in self._unreleased]
        if not victims:
            return set()
        self.measurements.maybe_measure_errors(self.cache, victims[0].block_ids)
        decisions = self.client.plan([self._candidate(v) for v in victims], self.measurements.qualities())
        if decisions is None:  # the reply may be lost after the service reserved slots: give any back
            self._release_in_background([victim.request.request_id for victim in victims])
            return set()
        by_id = {victim.request.request_id: victim for victim in victims}
        written = [d.request_id for d in decisions if d.swap and self._write(transport, by_id[d.request_id], d)]
        if transport.commits_on_write or not written:
            return set(written)
        committed = self.client.commit(written) or set()
        not_committed = sorted(set(written) - committed)
        for request_id in not_committed:  # it will recompute
            self._forget(request_id)
        if not_committed:  # a lost reply may hide a commit that happened: release (unknown ids are ignored)
            self._release_in_background(not_committed)
        return committed

    def _candidate(self, victim: EvictedKv) -> SwapCandidate:
        num_blocks = len(victim.block_ids)
        codecs = []
        for codec in KvCodec:
            size = encoded_size_bytes(self.cache.shape, self.cache.key_cache.dtype, num_blocks, codec)
            out_s, in_s = self.measurements.estimate_s(codec, size)
            codecs.append(CodecCost(codec, size, out_s, in_s))
        return SwapCandidate(
            victim.request.request_id, victim.num_kv_tokens, victim.recompute_s, victim.expected_wait_s, tuple(codecs)
        )

    def _write(self, transport: HostTransport, victim: EvictedKv, decision: SwapDecision) -> bool:
        codec = decision.codec
        assert codec is not None  # a swap decision names its codec (swap_pb)
        started = time.perf_counter()
        try:
            data = encode_blocks(self.cache, victim.block_ids, codec)
            transport.write(decision.request_id, decision.slot_ids, data)
        except (TransferFailed, ValueError) as error:
            log.warning("swap out of %s failed (%s); it will recompute", decision.request_id, error)
            self._release_in_background([decision.request_id])
            return False
        self.measurements.record_out(codec, data.numel(), time.perf_counter() - started)
        self._saved[decision.request_id] = SavedKv(codec, tuple(decision.slot_ids), data.numel(), len(victim.block_ids))
        return True

    # -- bringing it back ---------------------------------------------------------------------------

    def prefetch(self, requests: list[Request]) -> None:
        new_ids = [
            r.request_id for r in requests if r.request_id in self._saved and r.request_id not in self._prefetching
        ]
        if not new_ids or self._transport is None:
            return
        batch = self._background.submit(self._fetch_batch, self._transport, new_ids)
        for index, request_id in enumerate(new_ids):
            self._prefetching[request_id] = _item_of(batch, index)

    def _fetch_batch(self, transport: HostTransport, request_ids: list[str]) -> list[torch.Tensor | None]:
        """Background thread: pins the requests and reads their bytes (None = not restorable)."""
        grants = self.client.begin_restore(request_ids)
        if grants is None:
            return [None] * len(request_ids)
        fetched = []
        for grant in grants:
            fetched.append(self._read(transport, grant) if grant.restorable else None)
        return fetched

    def _read(self, transport: HostTransport, grant: RestoreGrant) -> torch.Tensor | None:
        started = time.perf_counter()
        try:
            data = transport.read(grant.request_id, grant.slot_ids, grant.size_bytes)
        except TransferFailed as error:
            log.warning("swap in of %s failed (%s); it will recompute", grant.request_id, error)
            return None
        assert grant.codec is not None  # a restorable grant names its codec (swap_pb)
        self.measurements.record_in(grant.codec, grant.size_bytes, time.perf_counter() - started)
        return data

    def ensure_restorable(self, request: Request) -> bool:
        request_id = request.request_id
        if request_id not in self._saved:
            return False
        if request_id not in self._prefetching:
            self.prefetch([request])
        future = self._prefetching.get(request_id)
        data = None
        if future is not None:
            try:
                data = future.result(timeout=PREFETCH_WAIT_S)
            except Exception as error:  # a timeout or a failed fetch: recompute rather than stall or fail
                log.warning("prefetch of %s did not complete (%r); it will recompute", request_id, error)
        if data is None:
            self.measurements.num_restores_lost += 1
            self._forget(request_id)
            self._release_in_background([request_id])
            return False
        return True

    def restore(self, restores: list[KvRestore]) -> None:
        done = []
        for restore in restores:
            saved = self._saved.pop(restore.request_id)
            data = self._prefetching.pop(restore.request_id).result()
            started = time.perf_counter()
            decode_blocks(data, self.cache, restore.block_ids[: saved.num_blocks], saved.codec)
            self.measurements.record_decode(saved.codec, saved.size_bytes, time.perf_counter() - started)
            done.append(restore.request_id)
        if done:
            self._release_in_background(done)

    def discard(self, request_id: str) -> None:
        if self._forget(request_id):
            self._release_in_background([request_id])

    def preemption_cost_s(self, num_kv_tokens: int, num_blocks: int, recompute_s: float) -> float:
        """Measured full-precision swap out + in (the codec every error budget allows); recompute_s
        until both directions have been measured or while the memory service is unreachable."""
        if self._region is None or not self.client.available:
            return recompute_s
        size = encoded_size_bytes(self.cache.shape, self.cache.key_cache.dtype, num_blocks, KvCodec.FULL)
        out_s, in_s = self.measurements.estimate_s(KvCodec.FULL, size)
        return out_s + in_s if out_s and in_s else recompute_s

    # -- helpers ----------------------------------------------------------------------------------

    def _current_transport(self) -> HostTransport | None:
        region = self._region
        if region is None or not region.size_bytes:
            return None
        if self._transport is None or self._transport_region is not region:
            if self._transport is not None:
                self._transport.close()
            self._transport = open_transport(region, self.client.stub, self.client.engine_id, self.client.timeout_s)
            self._transport_region = region
            log.info("swapping KV through %s", self._transport.name)
        return self._transport

    def _forget(self, request_id: str) -> bool:
        self._prefetching.pop(request_id, None)
        return self._saved.pop(request_id, None) is not None

    def _release_in_background(self, request_ids: list[str]) -> None:
        self._pending_releases.append(self._background.submit(self._release, request_ids))

    def retry_failed_releases(self) -> None:
        """Any thread (the memory reporter calls it after each report): sends the releases that
        failed again, in the background, so an idle engine does not keep slots it gave up."""
        with self._unreleased_lock:
            if not self._unreleased:
                return
        self._background.submit(self._release, [])

    def _release(self, request_ids: list[str]) -> None:
        """Background thread: one ReleaseSwapped for these ids and every earlier one not yet released.
        Ids leave `_unreleased` only once the call succeeded (the memory service ignores ids it does
        not hold, so sending one again is safe); until then `evict` will not swap them again."""
        with self._unreleased_lock:
            self._unreleased.update(request_ids)
            batch = sorted(self._unreleased)
        if batch and self.client.release(batch):
            with self._unreleased_lock:
                self._unreleased.difference_update(batch)

    def _finish_releases(self) -> None:
        """Waits for the background releases (normally long done: they are small calls)."""
        for future in self._pending_releases:
            future.result()
        self._pending_releases.clear()

    def close(self) -> None:
        self._background.shutdown(wait=True, cancel_futures=False)
        if self._transport is not None:
            self._transport.close()
        self.client.close()


def _item_of(batch: Future, index: int) -> Future:
    """A future of one element of a batch future's list result."""
    item: Future = Future()

    def settle(done: Future) -> None:
        error = done.exception()
        if error is not None:
            item.set_exception(error)
        else:
            item.set_result(done.result()[index])

    batch.add_done_callback(settle)
    return item
