"""Moves a swapped request's encoded KV bytes between the engine and the memory service's host tier.

Two transports behind one interface; `open_transport` picks one per registration:

- shared memory (same host): the memory service owns a file under /dev/shm cut into slots; the
  engine maps it and copies bytes straight into and out of its slots. gRPC carries only slot ids
  and sizes (PlanEviction, CommitSwapOut, BeginRestore). One copy each way, no serialization.
- gRPC stream (another host, or the file is not ours): UploadSwapped (1 MiB chunks, the service
  commits when the stream ends) and DownloadSwapped.

The engine cannot import services.memory (services are coupled only by the .proto files), so the
region file's layout is restated here; it is part of the contract, like the proto:

    offset 0                                         first_slot_offset_bytes
    [ REGION_MAGIC (8 B) | region_token | 0 ... ]    [ slot 0 ][ slot 1 ] ... [ slot N-1 ]
    slot i spans [first_slot_offset_bytes + i * slot_bytes, ... + slot_bytes)

A record's bytes run through its slots in the order given (slot_ids[k] holds bytes
[k * slot_bytes, (k + 1) * slot_bytes)); consecutive ascending slot ids are copied in one piece:

    slot_ids [5, 6, 7, 2]   -> region pieces: slots 5..7 (3 * slot_bytes), slot 2 (the rest)

Every failure (gRPC status, I/O error, size mismatch, closed transport, a region file re-created
by a restarted service at the same path: the header no longer holds our token) raises
TransferFailed, which the offloader turns into recompute. Thread-safe: the engine thread writes
while the prefetch thread reads; `close` while a copy runs defers the unmap until that copy ends.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import threading
from typing import Iterator, Protocol, Sequence

import grpc
import numpy as np
import torch

from services.common.contracts import memory_service_pb2, memory_service_pb2_grpc

log = logging.getLogger(__name__)

REGION_MAGIC = b"ALISEKV1"  # first bytes of the region file, then the token (services/memory/host_region.py)
STREAM_CHUNK_BYTES = 1024 * 1024  # UploadSwapped chunk: the proto's "at most 1 MiB"
# A stream's deadline grows with its size: timeout_s plus the size at this slowest acceptable rate
# (Python gRPC streams ~0.3-1 GB/s on loopback; a 1 s deadline alone would fail every large KV).
MIN_STREAM_BYTES_PER_S = 50e6
SHARED_MEMORY = "shared-memory"
GRPC_STREAM = "grpc-stream"
# The host region as the memory service's registration reply carries it: passed through the engine
# unread and read only here, where it is mapped (the transport is the wire's edge, like the client).
HostRegionMessage = memory_service_pb2.HostRegion


class TransferFailed(Exception):
    """The bytes of a swap could not be moved; the message says which request and why."""


class HostTransport(Protocol):
    """How the engine writes and reads a swapped request's bytes in the host tier."""

    name: str  # SHARED_MEMORY or GRPC_STREAM
    commits_on_write: bool  # True when write() also commits (the stream); else call CommitSwapOut

    def write(self, request_id: str, slot_ids: Sequence[int], data: torch.Tensor) -> None: ...

    def read(self, request_id: str, slot_ids: Sequence[int], size_bytes: int) -> torch.Tensor: ...

    def close(self) -> None: ...


def _as_bytes(request_id: str, data: torch.Tensor) -> np.ndarray:
    """A numpy view (no copy) of a 1-D uint8 CPU tensor; TransferFailed otherwise."""
    if data.dtype != torch.uint8 or data.dim() != 1 or data.device.type != "cpu" or not data.is_contiguous():
        raise TransferFailed(
            f"{request_id}: data must be a contiguous 1-D uint8 CPU tensor, got {data.dtype} "
            f"of shape {tuple(data.shape)} on {data.device}"
        )
    if data.numel() == 0:
        raise TransferFailed(f"{request_id}: nothing to write (0 bytes)")
    return data.numpy()


class SharedMemoryTransport:
    """Copies bytes between tensors and the mapped region file (same host as the memory service)."""

    name = SHARED_MEMORY
    commits_on_write = False

    def __init__(self, region: memory_service_pb2.HostRegion, mapping: mmap.mmap) -> None:
        self._slot_bytes = region.slot_bytes
        self._first_slot_offset_bytes = region.first_slot_offset_bytes
        self._num_slots = (region.size_bytes - region.first_slot_offset_bytes) // region.slot_bytes
        self._header = np.frombuffer(REGION_MAGIC + region.region_token, dtype=np.uint8)  # the file's first bytes
        self._map: mmap.mmap | None = mapping
        self._bytes: np.ndarray | None = np.frombuffer(mapping, dtype=np.uint8)  # the whole file, no copy
        self._lock = threading.Lock()  # guards _closed, _num_active and the unmap
        self._num_active = 0  # copies in progress
        self._closed = False

    def write(self, request_id: str, slot_ids: Sequence[int], data: torch.Tensor) -> None:
        """Copies data into the record's slots (slot_ids[k] gets bytes [k * slot_bytes, ...))."""
        source = _as_bytes(request_id, data)
        self._copy(request_id, list(self._pieces(request_id, slot_ids, source.size)), source, to_region=True)

    def read(
        self, request_id: str, slot_ids: Sequence[int], size_bytes: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The record's bytes in a new tensor, or in `out` (a reused staging buffer of that size)."""
        if out is None:
            out = torch.empty(size_bytes, dtype=torch.uint8)
        elif out.numel() != size_bytes:
            raise TransferFailed(f"{request_id}: out holds {out.numel()} bytes, the record {size_bytes}")
        target = _as_bytes(request_id, out)
        self._copy(request_id, list(self._pieces(request_id, slot_ids, size_bytes)), target, to_region=False)
        return out

    def _pieces(self, request_id: str, slot_ids: Sequence[int], size_bytes: int) -> Iterator[tuple[int, int, int]]:
        """(region offset, data offset, length) per run of consecutive ascending slots."""
        slot_ids = list(slot_ids)
        num_needed = math.ceil(size_bytes / self._slot_bytes)
        if len(slot_ids) != num_needed or size_bytes <= 0:
            raise TransferFailed(
                f"{request_id}: {size_bytes} bytes need {num_needed} slots of {self._slot_bytes}, got {len(slot_ids)}"
            )
        bad = [slot for slot in slot_ids if not 0 <= slot < self._num_slots]
        if bad or len(set(slot_ids)) != len(slot_ids):
            raise TransferFailed(
                f"{request_id}: slot ids {slot_ids[:16]} out of range [0, {self._num_slots}) or repeated"
            )
        run_start = 0
        for index in range(1, len(slot_ids) + 1):
            if index < len(slot_ids) and slot_ids[index] == slot_ids[index - 1] + 1:
                continue
            data_start = run_start * self._slot_bytes
            length = min(index * self._slot_bytes, size_bytes) - data_start
            yield self._first_slot_offset_bytes + slot_ids[run_start] * self._slot_bytes, data_start, length
            run_start = index

    def _copy(self, request_id: str, pieces: list[tuple[int, int, int]], data: np.ndarray, *, to_region: bool) -> None:
        """Copies every piece between data and the region; the mapping stays until the copy ends."""
        with self._lock:
            if self._closed:
                raise TransferFailed(f"{request_id}: the shared-memory transport is closed")
            self._num_active += 1
        try:
            region = self._bytes  # no local reference may outlive the copy: _unmap needs none left
            if not np.array_equal(region[: self._header.size], self._header):
                raise TransferFailed(f"{request_id}: the region file was re-created (memory service restarted)")
            for region_start, data_start, length in pieces:
                if to_region:
                    region[region_start : region_start + length] = data[data_start : data_start + length]
                else:
                    data[data_start : data_start + length] = region[region_start : region_start + length]
        finally:
            region = None
            with self._lock:
                self._num_active -= 1
                if self._closed and self._num_active == 0:
                    self._unmap()

    def close(self) -> None:
        """Unmaps the region (after the copies in progress, if any); later calls raise TransferFailed."""
        with self._lock:
            self._closed = True
            if self._num_active == 0:
                self._unmap()

    def _unmap(self) -> None:
        if self._map is not None:
            self._bytes = None  # drop the buffer export first, or mmap.close raises BufferError
            self._map.close()
            self._map = None


class GrpcStreamTransport:
    """UploadSwapped / DownloadSwapped through the memory service (any host)."""

    name = GRPC_STREAM
    commits_on_write = True

    def __init__(self, stub: memory_service_pb2_grpc.MemoryServiceStub, engine_id: str, timeout_s: float) -> None:
        self._stub = stub  # synchronous stub (grpc.insecure_channel)
        self._engine_id = engine_id
        self._timeout_s = timeout_s  # deadline of a call, before the per-byte allowance

    def write(self, request_id: str, slot_ids: Sequence[int], data: torch.Tensor) -> None:
        """Streams the bytes in order; the service commits the record when the stream ends."""
        source = _as_bytes(request_id, data)

        def chunks() -> Iterator[memory_service_pb2.UploadSwappedRequest]:
            for offset in range(0, source.size, STREAM_CHUNK_BYTES):
                yield memory_service_pb2.UploadSwappedRequest(
                    engine_id=self._engine_id,
                    request_id=request_id,
                    offset_bytes=offset,
                    data=source[offset : offset + STREAM_CHUNK_BYTES].tobytes(),
                )

        try:
            reply = self._stub.UploadSwapped(chunks(), timeout=self._deadline_s(source.size))
        except grpc.RpcError as error:
            raise TransferFailed(f"{request_id}: UploadSwapped failed: {_status(error)}") from error
        if reply.num_bytes != source.size:
            raise TransferFailed(f"{request_id}: the service received {reply.num_bytes} of {source.size} bytes")

    def read(
        self, request_id: str, slot_ids: Sequence[int], size_bytes: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The bytes of a record pinned by BeginRestore, in order, checked against size_bytes."""
        out = torch.empty(size_bytes, dtype=torch.uint8) if out is None else out
        if out.numel() != size_bytes:
            raise TransferFailed(f"{request_id}: out holds {out.numel()} bytes, the record {size_bytes}")
        target, num_received = _as_bytes(request_id, out), 0
        request = memory_service_pb2.DownloadSwappedRequest(engine_id=self._engine_id, request_id=request_id)
        try:
            stream = self._stub.DownloadSwapped(request, timeout=self._deadline_s(size_bytes))
            for chunk in stream:
                end = num_received + len(chunk.data)
                if chunk.offset_bytes != num_received or end > size_bytes:
                    stream.cancel()
                    raise TransferFailed(
                        f"{request_id}: chunk at {chunk.offset_bytes} of {len(chunk.data)} bytes does not follow "
                        f"{num_received} received bytes of {size_bytes}"
                    )
                target[num_received:end] = np.frombuffer(chunk.data, dtype=np.uint8)
                num_received = end
        except grpc.RpcError as error:
            raise TransferFailed(f"{request_id}: DownloadSwapped failed: {_status(error)}") from error
        if num_received != size_bytes:
            raise TransferFailed(f"{request_id}: received {num_received} of {size_bytes} bytes")
        return out

    def _deadline_s(self, num_bytes: int) -> float:
        return self._timeout_s + num_bytes / MIN_STREAM_BYTES_PER_S

    def close(self) -> None:
        """Nothing to release: the stub's channel belongs to the caller."""


def _status(error: grpc.RpcError) -> str:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    return f"{code.name if code else 'unknown status'}: {details}"


def map_region(region: memory_service_pb2.HostRegion) -> mmap.mmap | None:
    """The region file mapped read-write when it is the service's (same host, same token); else None."""
    if not region.path or not region.region_token or region.slot_bytes <= 0:
        return None
    header_bytes = len(REGION_MAGIC) + len(region.region_token)
    if region.first_slot_offset_bytes < header_bytes or region.size_bytes <= region.first_slot_offset_bytes:
        return None
    try:
        descriptor = os.open(region.path, os.O_RDWR)
    except OSError as error:
        log.info("host region %s is not on this host or not ours (%s)", region.path, error)
        return None
    try:
        if os.fstat(descriptor).st_size < region.size_bytes:
            return None
        mapping = mmap.mmap(descriptor, region.size_bytes)
    except OSError as error:
        log.info("cannot map host region %s (%s)", region.path, error)
        return None
    finally:
        os.close(descriptor)
    if mapping[:header_bytes] != REGION_MAGIC + region.region_token:
        log.info("host region %s holds another token (a different service or host)", region.path)
        mapping.close()
        return None
    return mapping


def open_transport(
    region: memory_service_pb2.HostRegion,
    stub: memory_service_pb2_grpc.MemoryServiceStub,
    engine_id: str,
    timeout_s: float,
) -> HostTransport:
    """Shared memory when the region file is reachable and holds the token; else the gRPC stream."""
    mapping = map_region(region)
    if mapping is not None:
        return SharedMemoryTransport(region, mapping)
    return GrpcStreamTransport(stub, engine_id, timeout_s)
