"""The /metrics endpoint plumbing shared by the services: the port flag, binding, loop snapshots."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter

from services.common.metrics_server import (
    MetricsPort,
    add_metrics_port_flag,
    metrics_port_from_flag,
    run_on_loop,
    start_metrics_server,
)
from tests.metrics_scrape import scrape, value


def _flag(*argv: str) -> MetricsPort | None:
    parser = argparse.ArgumentParser()
    add_metrics_port_flag(parser, default_port=9102)
    return metrics_port_from_flag(parser.parse_args(argv).metrics_port, default_port=9102)


def test_the_flag_defaults_to_a_best_effort_port_and_takes_zero_and_off():
    assert _flag() == MetricsPort(9102, must_bind=False)
    assert _flag("--metrics-port", "9200") == MetricsPort(9200, must_bind=True)
    assert _flag("--metrics-port", "0") == MetricsPort(0)
    assert _flag("--metrics-port", "-1") is None
    for bad in ("-2", "65536", "x"):
        with pytest.raises(SystemExit):
            _flag("--metrics-port", bad)


@pytest.fixture
def taken_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_a_taken_default_port_is_skipped_with_a_warning_and_a_named_one_fails(taken_port, caplog):
    registry = CollectorRegistry()
    with caplog.at_level(logging.WARNING):
        assert start_metrics_server(registry, "127.0.0.1", MetricsPort(taken_port, must_bind=False)) is None
    assert f"127.0.0.1:{taken_port} is taken" in caplog.text
    with pytest.raises(OSError, match="--metrics-port 0"):
        start_metrics_server(registry, "127.0.0.1", MetricsPort(taken_port))


@pytest.mark.asyncio
async def test_each_server_serves_only_its_own_registry():
    registries = [CollectorRegistry(), CollectorRegistry()]
    for count, registry in enumerate(registries, start=1):
        Counter("alise:things", "things", registry=registry).inc(count)
    servers = [start_metrics_server(r, "127.0.0.1", MetricsPort(0)) for r in registries]
    try:
        for count, server in enumerate(servers, start=1):
            assert value(await scrape(server.port), "alise:things_total") == count
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)
    with pytest.raises(OSError):  # stopped: nothing listens any more
        await scrape(servers[0].port)


@pytest.mark.asyncio
async def test_run_on_loop_reads_on_the_loop_thread_from_anywhere():
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    assert run_on_loop(loop, threading.get_ident) == loop_thread  # called on the loop: direct
    assert await asyncio.to_thread(run_on_loop, loop, threading.get_ident) == loop_thread  # handed over
    other = asyncio.new_event_loop()
    other.close()
    assert run_on_loop(other, threading.get_ident) is None  # a closed loop gives no snapshot
