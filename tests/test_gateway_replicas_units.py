"""Replica-aware gateway, pure parts: peer specs, DNS resolution, routing policies, the predicted-work
ledger and the health state machine (no servers)."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.config import GatewayConfig
from services.gateway.engine_load import ReplicaLoadTracker
from services.gateway.replica_discovery import PeerTarget, ReplicaDiscovery, parse_targets, resolve_target
from services.gateway.replica_health import HealthTracker, ReplicaState
from services.gateway.routing import ReplicaLoad, RoutingPolicy, pick_replica

# ----------------------------------------------------------------------------- peer specs and DNS


def test_parse_targets_splits_and_deduplicates():
    assert parse_targets("engine:50052, 10.0.0.6:50052,engine:50052,[::1]:7") == (
        PeerTarget("engine", 50052),
        PeerTarget("10.0.0.6", 50052),
        PeerTarget("::1", 7),
    )
    assert parse_targets("") == ()


@pytest.mark.parametrize("spec", ["engine", "engine:0", "a:1,,b:2", "engine:port", ":50052"])
def test_parse_targets_rejects_bad_entries(spec):
    with pytest.raises(ValueError, match="host:port"):
        parse_targets(spec)


def test_gateway_config_accepts_lists_and_names_bad_entries():
    config = GatewayConfig(engine_address="engine:50052,10.0.0.6:50052", engine_routing="round-robin")
    assert config.engine_routing is RoutingPolicy.ROUND_ROBIN  # the value's text becomes the member
    assert GatewayConfig.from_args(["--engine-address", "e:1"]).engine_routing is RoutingPolicy.LEAST_WORK
    assert (
        GatewayConfig.from_args(["--engine-address", "e:1", "--engine-routing", "round-robin"]).engine_routing
        is RoutingPolicy.ROUND_ROBIN
    )
    with pytest.raises(ValueError, match="engine_address must be host:port"):
        GatewayConfig(engine_address="engine:1,nope")
    with pytest.raises(ValueError, match="engine_routing must be one of"):
        GatewayConfig(engine_address="engine:1", engine_routing="random")
    with pytest.raises(ValueError, match="max_health_failures must be >= 1"):
        GatewayConfig(engine_address="engine:1", max_health_failures=0)


async def test_resolve_prefers_ipv4_and_keeps_ip_literals():
    assert await resolve_target(PeerTarget("localhost", 50052)) == {"127.0.0.1:50052"}
    assert await resolve_target(PeerTarget("10.1.2.3", 9)) == {"10.1.2.3:9"}
    assert await resolve_target(PeerTarget("::1", 9)) == {"[::1]:9"}
    with pytest.raises(OSError):
        await resolve_target(PeerTarget("no-such-host.invalid", 9))


async def test_discovery_reports_changes_and_keeps_last_answer_on_failure():
    answers: dict[str, object] = {"engine": frozenset({"10.0.0.1:1", "10.0.0.2:1"})}
    seen: list[frozenset[str]] = []

    async def resolve(target: PeerTarget) -> frozenset[str]:
        answer = answers[target.host]
        if isinstance(answer, Exception):
            raise answer
        return answer

    discovery = ReplicaDiscovery(parse_targets("engine:1"), interval_s=0.01, on_change=seen.append, resolve=resolve)
    await discovery.refresh()
    answers["engine"] = OSError("temporary failure in name resolution")
    await discovery.refresh()  # failed lookup: the last answer stays, no change reported
    answers["engine"] = frozenset({"10.0.0.2:1", "10.0.0.3:1"})
    discovery.start()
    for _ in range(200):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    await discovery.stop()
    assert seen == [frozenset({"10.0.0.1:1", "10.0.0.2:1"}), frozenset({"10.0.0.2:1", "10.0.0.3:1"})]


# ----------------------------------------------------------------------------- routing policies


def _loads(*work_s: float, in_flight: tuple[int, ...] | None = None) -> list[ReplicaLoad]:
    in_flight = in_flight or (0,) * len(work_s)
    return [ReplicaLoad(f"10.0.0.{i}:1", w, n) for i, (w, n) in enumerate(zip(work_s, in_flight))]


def test_least_work_picks_the_least_loaded_replica():
    assert pick_replica(RoutingPolicy.LEAST_WORK, _loads(3.0, 0.5, 2.0), turn=0).address == "10.0.0.1:1"


def test_least_work_ties_go_to_fewer_in_flight_then_rotate():
    tied = _loads(1.0, 1.0, 1.0, in_flight=(2, 1, 1))
    picks = {pick_replica(RoutingPolicy.LEAST_WORK, tied, turn).address for turn in range(4)}
    assert picks == {"10.0.0.1:1", "10.0.0.2:1"}


def test_round_robin_ignores_load():
    loads = _loads(100.0, 0.0)
    picks = [pick_replica(RoutingPolicy.ROUND_ROBIN, loads, turn).address for turn in range(4)]
    assert picks == ["10.0.0.0:1", "10.0.0.1:1"] * 2


def test_no_candidate_is_an_error():
    with pytest.raises(ValueError):
        pick_replica(RoutingPolicy.LEAST_WORK, [], 0)


# ----------------------------------------------------------------------------- predicted-work ledger


def test_ledger_moves_with_this_gateways_traffic_between_polls():
    tracker = ReplicaLoadTracker()
    first = tracker.begin(predicted_output_tokens=100, max_tokens=500)
    second = tracker.begin(predicted_output_tokens=400, max_tokens=50)  # max_tokens caps it at 50
    assert tracker.outstanding_tokens() == 150
    first.num_received_tokens = 30
    assert tracker.outstanding_tokens() == 120
    first.num_received_tokens = 200  # outlived its prediction: still 1 while live, as in the engine
    assert tracker.outstanding_tokens() == 51
    tracker.end(first)
    tracker.end(second)
    assert tracker.outstanding_tokens() == 0


def test_ledger_snaps_to_polled_stats_and_keeps_other_gateways_work():
    tracker = ReplicaLoadTracker()
    mine = tracker.begin(predicted_output_tokens=100, max_tokens=1000)
    # The engine holds 100 tokens of ours and 300 of another gateway's, draining 0.01 s per token.
    tracker.on_stats(polled_tokens=400, polled_work_s=4.0, mine_at_poll=tracker.mine_tokens())
    assert tracker.outstanding_tokens() == 400
    assert tracker.outstanding_work_s(default_seconds_per_token=99.0) == pytest.approx(4.0)
    tracker.begin(predicted_output_tokens=50, max_tokens=1000)  # sent after the poll: added at once
    tracker.end(mine)  # finished after the poll: removed at once
    assert tracker.outstanding_tokens() == 350


def test_ledger_uses_the_default_rate_until_the_engine_reports_one():
    tracker = ReplicaLoadTracker()
    tracker.begin(predicted_output_tokens=10, max_tokens=100)
    assert tracker.outstanding_work_s(default_seconds_per_token=0.5) == 5.0
    tracker.on_stats(polled_tokens=0, polled_work_s=0, mine_at_poll=10)  # idle engine: no rate yet
    assert tracker.seconds_per_token is None
    # an idle engine that has decoded before reports its drain rate all the same
    tracker.on_stats(polled_tokens=0, polled_work_s=0, mine_at_poll=10, polled_s_per_token=0.02)
    assert tracker.seconds_per_token == pytest.approx(0.02)


def test_ledger_rate_ignores_a_prefill_heavy_step():
    tracker = ReplicaLoadTracker()
    for work_s in (1.0, 1.0, 50.0, 1.0):  # 100 tokens; one answer came right after a long prefill step
        tracker.on_stats(polled_tokens=100, polled_work_s=work_s, mine_at_poll=0)
    assert tracker.seconds_per_token == pytest.approx(0.01)


# ----------------------------------------------------------------------------- health state machine


def test_health_tracker_transitions():
    health = HealthTracker(max_failures=3)
    assert health.state == ReplicaState.UNKNOWN and not health.is_routable
    health.on_answer(serving=True)
    assert health.is_routable
    assert health.on_failure("UNAVAILABLE: connection refused") is False
    assert health.state == ReplicaState.SUSPECT
    assert health.on_failure("x") is False
    assert health.on_failure("x") is True  # the third failure in a row: DOWN, reported once
    assert health.state == ReplicaState.DOWN and health.down_since_s is not None
    assert health.on_failure("x") is False
    health.on_answer(serving=False)
    assert health.state == ReplicaState.DRAINING and not health.is_routable
    health.on_answer(serving=True)
    health.on_call_failed("UNAVAILABLE: socket closed")
    assert health.state == ReplicaState.SUSPECT and "socket closed" in health.last_error
