"""`alise bench kv-transfer`: GB/s of the host tier's two data paths, shared memory and gRPC stream.

A real memory service runs in this process (grpc.aio on 127.0.0.1, port 0, in a background thread
with its own event loop); a fake engine registers with it and swaps one request of each size out
and back in through the engine's own transports (services/engine/kv_offload/host_transport.py),
exactly as the offloader does:

    swap out:  PlanEviction (rpc) -> write (data) -> CommitSwapOut (rpc; the stream commits itself)
    swap in:   BeginRestore (rpc) -> read (data) -> ReleaseSwapped (rpc)

Data movement and RPCs are timed separately; GB/s = bytes / median seconds (1 GB = 1e9 bytes).
"read reused" reads into one staging buffer kept across repeats: a fresh tensor per read pays the
page faults of new memory, which a long-lived engine staging buffer does not. Warm-up repeats run
first and are left out of the medians (the first write into the sparse tmpfs region faults its
pages in; its time is kept as first_write_s). The stream shares this process's GIL with the
server, so its figures are a lower bound of a separate-process service.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc
import torch

from services.bench.results import build_report, write_report
from services.common import arg_types
from services.common.cli_errors import print_error
from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.engine.kv_offload.host_transport import (
    GrpcStreamTransport,
    HostTransport,
    SharedMemoryTransport,
    open_transport,
)
from services.memory import app
from services.memory.config import DEFAULT_HOST_TIER_BLOCK_BYTES, MemoryConfig

MIB = 1024 * 1024
ENGINE_ID = "bench-engine"
CALL_TIMEOUT_S = 30.0
SERVER = "in-process: grpc.aio on 127.0.0.1:0 in a background thread of the benchmark (shares its GIL)"


@dataclass(frozen=True)
class TransferConfig:
    """One `alise bench kv-transfer` run."""

    sizes_mib: tuple[int, ...]  # bytes of one swapped request, MiB
    num_repeats: int  # measured swap round trips per path and size
    num_warmup: int  # unmeasured round trips first
    slot_bytes: int  # host tier slot size
    server: str = SERVER  # where the memory service ran


@dataclass
class PathFigures:
    """Medians of one path at one size."""

    path: str  # shared-memory or grpc-stream
    size_mib: int
    write_data_gb_per_s: float  # bytes / write time (data movement only)
    write_total_gb_per_s: float  # bytes / (plan + write + commit)
    read_data_gb_per_s: float  # bytes / read time into a new tensor
    read_total_gb_per_s: float  # bytes / (begin_restore + read + release)
    read_reused_gb_per_s: float  # bytes / read time into a reused staging buffer
    plan_ms: float
    commit_ms: float  # 0 for the stream (it commits when the upload ends)
    begin_restore_ms: float
    release_ms: float
    first_write_s: float  # the first (warm-up) write, region pages not yet resident
    samples_s: dict[str, list[float]] = field(default_factory=dict)  # every measured time, by step


class ServiceThread:
    """The memory service on its own event loop thread, so this thread can call it synchronously."""

    def __init__(self, config: MemoryConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="memory-service", daemon=True)
        self._thread.start()
        self.handle = asyncio.run_coroutine_threadsafe(app.start(config), self._loop).result()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.handle.stop(0), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _timed(call: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def _round_trip(
    stub: rpc.MemoryServiceStub, transport: HostTransport, data: torch.Tensor, staging: torch.Tensor
) -> dict[str, float]:
    """One swap out and in of `data`; seconds per step. Raises if the bytes do not come back equal."""
    size_bytes = data.numel()
    victim = pb.EvictionCandidate(
        request_id="r",
        num_kv_tokens=1,
        recompute_s=1e6,
        expected_wait_s=1e6,
        codecs=[pb.CodecCost(codec=pb.KV_CODEC_FULL, size_bytes=size_bytes)],
    )
    plan, times = pb.PlanEvictionRequest(engine_id=ENGINE_ID, victims=[victim]), {}
    reply, times["plan"] = _timed(lambda: stub.PlanEviction(plan, timeout=CALL_TIMEOUT_S))
    (decision,) = reply.decisions
    if decision.action != pb.EVICTION_ACTION_SWAP:
        raise RuntimeError(f"the service did not plan a swap: {decision.reason}")
    _, times["write"] = _timed(lambda: transport.write("r", decision.slot_ids, data))
    times["commit"] = 0.0
    if not transport.commits_on_write:
        commit = pb.CommitSwapOutRequest(engine_id=ENGINE_ID, request_ids=["r"])
        _, times["commit"] = _timed(lambda: stub.CommitSwapOut(commit, timeout=CALL_TIMEOUT_S))
    restore = pb.BeginRestoreRequest(engine_id=ENGINE_ID, request_ids=["r"])
    grants, times["begin_restore"] = _timed(lambda: stub.BeginRestore(restore, timeout=CALL_TIMEOUT_S).grants)
    grant = grants[0]
    back, times["read"] = _timed(lambda: transport.read("r", grant.slot_ids, size_bytes))
    _, times["read_reused"] = _timed(lambda: transport.read("r", grant.slot_ids, size_bytes, out=staging))
    release = pb.ReleaseSwappedRequest(engine_id=ENGINE_ID, request_ids=["r"])
    _, times["release"] = _timed(lambda: stub.ReleaseSwapped(release, timeout=CALL_TIMEOUT_S))
    if not (torch.equal(back, data) and torch.equal(staging, data)):
        raise RuntimeError(f"{transport.name}: the bytes read back differ from those written")
    return times


def measure_path(
    stub: rpc.MemoryServiceStub, transport: HostTransport, data: torch.Tensor, config: TransferConfig
) -> PathFigures:
    staging = torch.empty_like(data)
    runs = [_round_trip(stub, transport, data, staging) for _ in range(config.num_warmup + config.num_repeats)]
    measured = runs[config.num_warmup :]
    median_s = {step: statistics.median(run[step] for run in measured) for step in measured[0]}
    gb = data.numel() / 1e9
    return PathFigures(
        path=transport.name,
        size_mib=data.numel() // MIB,
        write_data_gb_per_s=gb / median_s["write"],
        write_total_gb_per_s=gb / statistics.median(r["plan"] + r["write"] + r["commit"] for r in measured),
        read_data_gb_per_s=gb / median_s["read"],
        read_total_gb_per_s=gb / statistics.median(r["begin_restore"] + r["read"] + r["release"] for r in measured),
        read_reused_gb_per_s=gb / median_s["read_reused"],
        plan_ms=median_s["plan"] * 1e3,
        commit_ms=median_s["commit"] * 1e3,
        begin_restore_ms=median_s["begin_restore"] * 1e3,
        release_ms=median_s["release"] * 1e3,
        first_write_s=runs[0]["write"],
        samples_s={step: [run[step] for run in measured] for step in measured[0]},
    )


def run_benchmark(config: TransferConfig) -> list[PathFigures]:
    """Both paths at every size against one in-process memory service."""
    max_bytes = max(config.sizes_mib) * MIB
    num_slots = -(-max_bytes // config.slot_bytes)
    service = ServiceThread(
        MemoryConfig(
            port=0, host_tier_capacity_bytes=num_slots * config.slot_bytes, host_tier_block_bytes=config.slot_bytes
        )
    )
    try:
        with grpc.insecure_channel(service.handle.address) as channel:
            stub = rpc.MemoryServiceStub(channel)
            layout = pb.KvBlockLayout(
                block_size_tokens=16,
                num_layers=1,
                num_kv_heads=1,
                head_dim=1,
                dtype=pb.KV_DTYPE_FLOAT16,
                block_bytes=config.slot_bytes,
            )
            registered = stub.RegisterEngine(
                pb.RegisterEngineRequest(
                    engine_id=ENGINE_ID, address="127.0.0.1:1", model_name="bench", num_device_blocks=1, layout=layout
                )
            )
            shared = open_transport(registered.host_region, stub, ENGINE_ID, CALL_TIMEOUT_S)
            if not isinstance(shared, SharedMemoryTransport):
                raise RuntimeError("could not map the service's region file on this host")
            transports = (shared, GrpcStreamTransport(stub, ENGINE_ID, CALL_TIMEOUT_S))
            data = torch.randint(0, 256, (max_bytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
            figures = [
                measure_path(stub, transport, data[: size * MIB], config)
                for size in config.sizes_mib
                for transport in transports
            ]
            shared.close()
    finally:
        service.stop()
    return figures


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("kv-transfer", help="host-tier KV transfer GB/s: shared memory vs gRPC stream")
    parser.add_argument("--sizes-mib", default="1,16,64,256", help="comma-separated request sizes, MiB")
    parser.add_argument("--num-repeats", type=arg_types.positive_int, default=5)
    parser.add_argument("--num-warmup", type=arg_types.non_negative_int, default=1)
    parser.add_argument(
        "--slot-bytes",
        type=arg_types.positive_int,
        default=DEFAULT_HOST_TIER_BLOCK_BYTES,
        help="host tier slot size, bytes (the memory service's --host-tier-block-bytes)",
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/kv_transfer.json"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        sizes = arg_types.comma_list(args.sizes_mib, arg_types.positive_int)
    except argparse.ArgumentTypeError as error:
        print_error("alise bench kv-transfer", f"--sizes-mib: {error}")
        return 2
    config = TransferConfig(sizes, args.num_repeats, args.num_warmup, args.slot_bytes)
    load_before = os.getloadavg()
    figures = run_benchmark(config)
    load_after = os.getloadavg()
    print(f"memory service {SERVER}; medians of {config.num_repeats} round trips; GB/s = 1e9 B/s")
    print(
        f"{'path':<14} {'size':>8} {'write':>7} {'+rpcs':>7} {'read':>7} {'+rpcs':>7} {'reused':>7}"
        f" {'plan ms':>8} {'commit':>7} {'restore':>8} {'release':>8}"
    )
    for f in figures:
        print(
            f"{f.path:<14} {f.size_mib:>4} MiB {f.write_data_gb_per_s:>7.2f} {f.write_total_gb_per_s:>7.2f}"
            f" {f.read_data_gb_per_s:>7.2f} {f.read_total_gb_per_s:>7.2f} {f.read_reused_gb_per_s:>7.2f}"
            f" {f.plan_ms:>8.2f} {f.commit_ms:>7.2f} {f.begin_restore_ms:>8.2f} {f.release_ms:>8.2f}"
        )
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    report = build_report(
        "kv_transfer",
        config,
        {
            "figures": figures,
            "goal_shared_memory_gb_per_s": 1.0,
            "torch_num_threads": torch.get_num_threads(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
    )
    print(f"saved {write_report(args.out, report)}")
    return 0
