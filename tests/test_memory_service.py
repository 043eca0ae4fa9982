"""The memory service in-process on 127.0.0.1 port 0, called over a real grpc.aio channel."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import sys

import grpc
import pytest

from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.common.health import is_serving
from services.memory import app
from services.memory.config import MemoryConfig

BLOCK_BYTES = 65536
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
async def service():
    handle = await app.start(MemoryConfig(port=0, report_interval_s=0.5, stale_after_s=30.0))
    try:
        yield handle
    finally:
        await handle.stop(0)


@pytest.fixture
async def stub(service):
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield rpc.MemoryServiceStub(channel)


def make_layout(**overrides) -> pb.KvBlockLayout:
    fields = dict(
        block_size_tokens=16,
        num_layers=4,
        num_kv_heads=2,
        head_dim=64,
        dtype=pb.KV_DTYPE_FLOAT16,
        block_bytes=BLOCK_BYTES,
    )
    fields.update(overrides)
    return pb.KvBlockLayout(**fields)


def make_register(engine_id: str = "e1", num_device_blocks: int = 100, **overrides):
    layout = overrides.pop("layout", make_layout())
    return pb.RegisterEngineRequest(
        engine_id=engine_id,
        address=f"127.0.0.1:{60000 + len(engine_id)}",
        model_name="tiny",
        num_device_blocks=num_device_blocks,
        layout=layout,
        **overrides,
    )


async def test_health_check_reports_serving(service):
    assert await is_serving(service.address)
    assert await is_serving(service.address, service=app.SERVICE_NAME)


async def test_two_engines_register_report_and_show_in_stats(stub):
    first = await stub.RegisterEngine(make_register("e1", 100))
    assert (first.report_interval_s, first.was_registered) == (0.5, False)
    await stub.RegisterEngine(make_register("e2", 40, layout=make_layout(block_bytes=2 * BLOCK_BYTES)))
    for engine_id, num_used, num_free, num_requests in (("e1", 30, 70, 3), ("e2", 40, 0, 5)):
        reply = await stub.ReportUsage(
            pb.ReportUsageRequest(
                engine_id=engine_id,
                num_device_blocks_used=num_used,
                num_device_blocks_free=num_free,
                num_requests=num_requests,
                sequence_number=1,
            )
        )
        assert reply.accepted

    stats = await stub.GetStats(pb.MemoryServiceGetStatsRequest())
    assert stats.ledger_consistent
    by_id = {engine.engine_id: engine for engine in stats.engines}
    assert sorted(by_id) == ["e1", "e2"]
    e1, e2 = by_id["e1"], by_id["e2"]
    assert e1.device.tier == pb.MEMORY_TIER_DEVICE
    assert (e1.device.num_blocks_total, e1.device.num_blocks_used, e1.device.num_blocks_free) == (100, 30, 70)
    assert e1.device.used_bytes == 30 * BLOCK_BYTES and e1.num_requests == 3
    assert (e2.device.num_blocks_total, e2.device.num_blocks_used, e2.device.num_blocks_free) == (40, 40, 0)
    assert e2.device.used_bytes == 40 * 2 * BLOCK_BYTES and e2.num_requests == 5
    assert e2.layout == make_layout(block_bytes=2 * BLOCK_BYTES) and e2.model_name == "tiny"
    assert 0.0 <= e1.report_age_s < 30.0
    assert stats.host.tier == pb.MEMORY_TIER_HOST
    assert (stats.host.num_blocks_total, stats.host.num_blocks_used) == (4096, 0)  # 1 GiB of 256 KiB slots


async def test_reregister_stale_report_unknown_engine_and_unregister(stub):
    assert not (await stub.RegisterEngine(make_register("e1", 10))).was_registered
    assert (await stub.RegisterEngine(make_register("e1", 10))).was_registered
    fresh = pb.ReportUsageRequest(engine_id="e1", num_device_blocks_used=4, num_device_blocks_free=6, sequence_number=7)
    late = pb.ReportUsageRequest(engine_id="e1", num_device_blocks_used=9, num_device_blocks_free=1, sequence_number=6)
    assert (await stub.ReportUsage(fresh)).accepted
    assert (await stub.ReportUsage(late)).accepted  # known engine: ignored, but no re-registration
    stats = await stub.GetStats(pb.MemoryServiceGetStatsRequest())
    assert stats.engines[0].device.num_blocks_used == 4

    unknown = pb.ReportUsageRequest(engine_id="nobody", num_device_blocks_used=1, num_device_blocks_free=1)
    assert not (await stub.ReportUsage(unknown)).accepted
    assert (await stub.UnregisterEngine(pb.UnregisterEngineRequest(engine_id="e1"))).found
    assert not (await stub.UnregisterEngine(pb.UnregisterEngineRequest(engine_id="e1"))).found
    stats = await stub.GetStats(pb.MemoryServiceGetStatsRequest())
    assert list(stats.engines) == [] and stats.ledger_consistent


def _register_without_layout() -> pb.RegisterEngineRequest:
    request = make_register()
    request.ClearField("layout")
    return request


@pytest.mark.parametrize(
    "request_factory, message",
    [
        (lambda: make_register(engine_id=""), "engine_id must not be empty"),
        (lambda: make_register(num_device_blocks=0), "num_device_blocks must be > 0"),
        (_register_without_layout, "layout is required"),
        (lambda: make_register(layout=make_layout(block_bytes=0)), "block_bytes must be > 0"),
        (lambda: make_register(layout=make_layout(block_size_tokens=0)), "block_size_tokens must be > 0"),
        (lambda: make_register(layout=make_layout(dtype=pb.KV_DTYPE_UNSPECIFIED)), "layout.dtype"),
    ],
    ids=["empty-id", "zero-blocks", "missing-layout", "zero-block-bytes", "zero-block-size", "no-dtype"],
)
async def test_invalid_registration_is_invalid_argument(stub, request_factory, message):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterEngine(request_factory())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


async def test_report_that_does_not_add_up_is_invalid_argument(stub):
    await stub.RegisterEngine(make_register("e1", 10))
    bad = pb.ReportUsageRequest(engine_id="e1", num_device_blocks_used=5, num_device_blocks_free=6, sequence_number=1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ReportUsage(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "5 used + 6 free device blocks, but registered 10" in caught.value.details()
    stats = await stub.GetStats(pb.MemoryServiceGetStatsRequest())
    assert stats.engines[0].device.num_blocks_used == 0 and stats.ledger_consistent


@pytest.mark.parametrize(
    "call",
    [
        lambda stub: stub.ReportUsage(pb.ReportUsageRequest(engine_id="")),
        lambda stub: stub.UnregisterEngine(pb.UnregisterEngineRequest(engine_id="")),
    ],
    ids=["report", "unregister"],
)
async def test_empty_engine_id_is_invalid_argument(stub, call):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_config_rejects_bad_values_and_parses_flags():
    with pytest.raises(ValueError, match="stale_after_s"):
        MemoryConfig(report_interval_s=5.0, stale_after_s=5.0)
    with pytest.raises(ValueError, match="host_tier_capacity_bytes"):
        MemoryConfig(host_tier_capacity_bytes=-1)
    with pytest.raises(ValueError, match="port"):
        MemoryConfig(port=70000)
    config = MemoryConfig.from_args(
        [
            "--port",
            "0",
            "--host-tier-capacity-bytes",
            "1048576",
            "--host-tier-block-bytes",
            "65536",
            "--stale-after-s",
            "3",
        ]
    )
    assert (config.port, config.host_tier_capacity_bytes, config.host_tier_block_bytes) == (0, 1 << 20, 65536)
    assert config.stale_after_s == 3.0 and MemoryConfig().port == 50054


async def test_host_tier_capacity_flag_shows_in_stats():
    handle = await app.start(
        MemoryConfig(port=0, host_tier_capacity_bytes=10 * BLOCK_BYTES, host_tier_block_bytes=BLOCK_BYTES)
    )
    try:
        async with grpc.aio.insecure_channel(handle.address) as channel:
            stats = await rpc.MemoryServiceStub(channel).GetStats(pb.MemoryServiceGetStatsRequest())
    finally:
        await handle.stop(0)
    assert (stats.host.num_blocks_total, stats.host.num_blocks_free, stats.host.used_bytes) == (10, 10, 0)
    assert stats.ledger_consistent


async def test_module_entry_point_serves_and_stops_on_sigterm():
    """`python -m services.memory --port 0` announces READY with its port, serves, exits 0 on SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.memory",
        "--port",
        "0",
        "--drain-seconds",
        "0",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode().split()
        assert line[:2] == ["READY", app.SERVICE_NAME], line
        assert await is_serving(line[2])
    finally:
        process.send_signal(signal.SIGTERM)
        return_code = await asyncio.wait_for(process.wait(), timeout=30)
    assert return_code == 0
