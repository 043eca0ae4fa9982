"""How fast a gateway notices a dead engine replica, three ways (used by `bench_replicas`).

    frozen   SIGSTOP one engine with streams open on both (a hung or partitioned host: sockets stay
             open, nothing answers); then SIGCONT and time its return
    crash    SIGKILL one engine with streams open on both (the kernel resets its connections);
             then requests sent right after the kill, which must all go to the survivor
    idle     SIGKILL the other engine with no traffic: only health checks can notice

Each reports: seconds from the signal until the streams on that engine ended (and with what status),
until the gateway stopped routing to it (state no longer "serving"), and until it marked it "down".
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import grpc

from services.cli.replica_fleet import ReplicaFleet
from services.common.contracts import common_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from services.gateway.app import GatewayHandle

LONG_PROMPT = "Write a long story about a lighthouse keeper and the ships she guides home."
LONG_MAX_TOKENS = 1500
POLL_S = 0.01
SURVIVOR_WATCH_S = 2.0  # after the signalled engine's streams ended: the others must keep streaming


def _request(max_tokens: int) -> gateway_service_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return gateway_service_pb2.GenerateRequest(prompt_text=LONG_PROMPT, sampling=sampling)


def _state(handle: GatewayHandle, address: str) -> str:
    return next(r.state for r in handle.peers.engines.reports() if r.address == address)


async def _until_state(
    handle: GatewayHandle, address: str, states: set[str], since_s: float, limit_s: float
) -> float | None:
    """Seconds from since_s until the replica's state is in `states` (None if not within limit_s)."""
    while time.monotonic() - since_s < limit_s:
        if _state(handle, address) in states:
            return time.monotonic() - since_s
        await asyncio.sleep(POLL_S)
    return None


async def _open_streams(stub, num: int) -> list:
    calls = [stub.Generate(_request(LONG_MAX_TOKENS), timeout=120) for _ in range(num)]
    for call in calls:
        await call.read()
    return calls


async def _watch_stream(call, since_s: float, limit_s: float) -> tuple[str, float]:
    """Reads until the stream ends or limit_s passes: (status, seconds from since_s)."""
    try:
        async with asyncio.timeout(limit_s):
            while await call.read() is not grpc.aio.EOF:
                pass
    except TimeoutError:
        return "still-streaming", time.monotonic() - since_s
    except grpc.aio.AioRpcError as error:
        return error.code().name, time.monotonic() - since_s
    finally:
        call.cancel()  # a no-op once the stream has ended
    return "OK", time.monotonic() - since_s


async def _outcomes(watchers: list[asyncio.Task], num_expected_to_end: int, limit_s: float) -> list[tuple[str, float]]:
    """Waits until the streams of the signalled engine have ended (or limit_s), then SURVIVOR_WATCH_S
    more; streams still running then are the survivor's and are reported as "still-streaming"."""
    deadline_s = time.monotonic() + limit_s
    while sum(w.done() for w in watchers) < num_expected_to_end and time.monotonic() < deadline_s:
        await asyncio.sleep(POLL_S)
    await asyncio.wait(watchers, timeout=SURVIVOR_WATCH_S)
    outcomes = []
    for watcher in watchers:
        if watcher.done():
            outcomes.append(watcher.result())
        else:
            watcher.cancel()
            outcomes.append(("still-streaming", float("nan")))
    await asyncio.gather(*watchers, return_exceptions=True)
    return outcomes


async def _stream_scenario(
    handle: GatewayHandle, fleet: ReplicaFleet, index: int, sig: signal.Signals, limit_s: float
) -> dict[str, Any]:
    """Four long streams (two per engine), then `sig` to engine `index`; times what follows."""
    address = fleet.engine_addresses[index]
    async with grpc.aio.insecure_channel(handle.address) as channel:
        calls = await _open_streams(gateway_service_pb2_grpc.GatewayServiceStub(channel), 4)
        in_flight = {r.address: r.num_in_flight for r in handle.peers.engines.reports()}
        signalled_s = time.monotonic()
        fleet.kill(fleet.engines[index], sig)
        detection = _watch_detection(handle, address, signalled_s, limit_s)
        watchers = [asyncio.create_task(_watch_stream(c, signalled_s, limit_s)) for c in calls]
        outcomes = await _outcomes(watchers, num_expected_to_end=in_flight[address], limit_s=limit_s)
    ended = [s for status, s in outcomes if status == "UNAVAILABLE"]
    return {
        "signal": sig.name,
        "engine": address,
        "in_flight_before": in_flight,
        "stream_outcomes": sorted(status for status, _ in outcomes),
        "streams_ended_unavailable_after_s": sorted(round(s, 4) for s in ended),
        **await detection,
    }


def _watch_detection(handle: GatewayHandle, address: str, since_s: float, limit_s: float) -> "asyncio.Future[dict]":
    """Starts timing, concurrently, when the gateway stops routing to `address` and when it marks it down."""

    async def both() -> dict[str, float | None]:
        not_routed, down = await asyncio.gather(
            _until_state(handle, address, {"suspect", "down", "draining"}, since_s, limit_s),
            _until_state(handle, address, {"down"}, since_s, limit_s),
        )
        return {"not_routed_after_s": not_routed, "down_after_s": down}

    return asyncio.ensure_future(both())


async def _until_idle(handle: GatewayHandle, limit_s: float) -> None:
    """Waits until every replica is serving and polled with nothing outstanding (a clean start)."""
    deadline_s = time.monotonic() + limit_s
    while time.monotonic() < deadline_s:
        reports = handle.peers.engines.reports()
        if all(r.state == "serving" and r.outstanding_tokens == 0 for r in reports):
            return
        await asyncio.sleep(0.1)


async def _requests_right_after(handle: GatewayHandle, num: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(handle.address) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        results = await asyncio.gather(
            *(stub.Generate(_request(4), timeout=60).read() for _ in range(num)), return_exceptions=True
        )
    return {"num_sent": num, "num_ok": sum(not isinstance(r, BaseException) for r in results)}


async def measure_failover(handle: GatewayHandle, fleet: ReplicaFleet, limit_s: float = 30.0) -> dict[str, Any]:
    """The three scenarios, in this order (the fleet ends with no engine alive)."""
    await _until_idle(handle, limit_s)
    frozen = await _stream_scenario(handle, fleet, 1, signal.SIGSTOP, limit_s)
    resumed_s = time.monotonic()
    fleet.kill(fleet.engines[1], signal.SIGCONT)
    frozen["serving_again_after_sigcont_s"] = await _until_state(
        handle, fleet.engine_addresses[1], {"serving"}, resumed_s, limit_s
    )
    await _until_idle(handle, limit_s)
    crash = await _stream_scenario(handle, fleet, 0, signal.SIGKILL, limit_s)
    crash["requests_right_after_kill"] = await _requests_right_after(handle, 5)
    await _until_idle(handle, limit_s)
    killed_s = time.monotonic()
    fleet.kill(fleet.engines[1], signal.SIGKILL)
    idle = {
        "signal": "SIGKILL",
        "engine": fleet.engine_addresses[1],
        **await _watch_detection(handle, fleet.engine_addresses[1], killed_s, limit_s),
    }
    return {"frozen": frozen, "crash": crash, "idle_crash": idle}
