"""kill -9 of one service under load: what the clients got, how fast, and the restart's pickup.

Each scenario runs on a started ChaosStack with a ClosedLoopLoad going:

    load running -> kill -9 <service> at t0 -> watch `observe_s` -> restart on the same port
    -> wait until the stack uses it again (recovery) -> FaultResult

What a client sees is read from the streams themselves: those in flight at t0 and those started
during the outage, by status code, and how long after t0 a failed stream learned of it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Awaitable, Callable

from services.bench.chaos_load import ClosedLoopLoad, StreamOutcome, count_codes
from services.bench.chaos_stack import ChaosStack
from services.common.contracts import common_pb2

POLL_S = 0.05


@dataclass(frozen=True)
class FaultResult:
    """One fault's figures (JSON-ready)."""

    fault: str  # e.g. "kill -9 predictor"
    in_flight_codes: dict[str, int]  # streams running at the kill, by final status
    new_codes: dict[str, int]  # streams started while the service was down, by final status
    max_failure_notice_s: float  # kill -> the end of the slowest in-flight stream that failed (0: none failed)
    max_new_request_answer_s: float  # slowest first answer (token or error) of a request started while down
    restart_serving_s: float  # restart -> SERVING
    recovery_s: float  # SERVING -> the stack uses it again (see each scenario)
    recovery_signal: str  # what recovery means for this service
    num_lost_streams: int  # streams that ended without their tokens (any non-OK status)
    extra: dict  # scenario-specific figures

    def to_json(self) -> dict:
        return asdict(self)


def _first_answer_s(outcome: StreamOutcome) -> float:
    answered_s = outcome.first_token_s if outcome.first_token_s is not None else outcome.ended_s
    return answered_s - outcome.started_s


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float) -> float:
    """Seconds until check() is true; raises TimeoutError after timeout_s."""
    began_s = time.monotonic()
    while not await check():
        if time.monotonic() - began_s > timeout_s:
            raise TimeoutError(f"not within {timeout_s} s")
        await asyncio.sleep(POLL_S)
    return time.monotonic() - began_s


async def run_fault(
    stack: ChaosStack, load: ClosedLoopLoad, service: str, *, observe_s: float, recovery: "Recovery"
) -> FaultResult:
    """kill -9 `service`, watch the load for observe_s, restart it and time the pickup."""
    await asyncio.sleep(0.5)  # streams in every phase (prefill, decode) at the kill
    num_before = len(load.outcomes)
    killed_s = time.monotonic()
    in_flight = [o for o in load.outcomes if o.ended_s == 0.0]
    stack.kill(service)
    await stack.wait_exit(service)
    extra = await recovery.while_down(stack, killed_s, observe_s)
    restarted_s = time.monotonic()
    serving_s = await stack.restart(service)
    new = [o for o in load.outcomes[num_before:] if o.started_s < restarted_s]
    recovery_s = await recovery.picked_up(stack, load)
    await _until(lambda: _all_ended(in_flight + new), 120.0)
    failed_in_flight = [o for o in in_flight if o.code != "OK"]
    return FaultResult(
        fault=f"kill -9 {service}",
        in_flight_codes=count_codes(in_flight),
        new_codes=count_codes(new),
        max_failure_notice_s=max((o.ended_s - killed_s for o in failed_in_flight), default=0.0),
        max_new_request_answer_s=max((_first_answer_s(o) for o in new), default=0.0),
        restart_serving_s=serving_s,
        recovery_s=recovery_s,
        recovery_signal=recovery.signal,
        num_lost_streams=sum(o.code != "OK" for o in in_flight + new),
        extra=extra,
    )


async def _all_ended(outcomes: list[StreamOutcome]) -> bool:
    return all(o.ended_s > 0.0 for o in outcomes)


class Recovery:
    """How one service's outage is watched and its return detected."""

    signal = ""

    async def while_down(self, stack: ChaosStack, killed_s: float, observe_s: float) -> dict:
        await asyncio.sleep(observe_s)
        return {}

    async def picked_up(self, stack: ChaosStack, load: ClosedLoopLoad) -> float:
        raise NotImplementedError


class PredictorRecovery(Recovery):
    signal = "first stream predicted by the predictor again"

    async def picked_up(self, stack: ChaosStack, load: ClosedLoopLoad) -> float:
        began_s = time.monotonic()

        async def predicted() -> bool:
            return any(
                o.prediction_source == common_pb2.PREDICTION_SOURCE_PREDICTOR and o.started_s >= began_s
                for o in load.outcomes
            )

        return await _until(predicted, 60.0)


class MemoryRecovery(Recovery):
    signal = "every engine registered with the restarted memory service"

    async def picked_up(self, stack: ChaosStack, load: ClosedLoopLoad) -> float:
        async def registered() -> bool:
            stats = await stack.memory_stats()
            return {engine.engine_id for engine in stats.engines} >= set(stack.engine_names)

        return await _until(registered, 60.0)


class EngineRecovery(Recovery):
    """Also times the memory service's expiry of the killed engine (ledger and host slots released)."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.signal = f"{engine} generating for new requests again"

    async def while_down(self, stack: ChaosStack, killed_s: float, observe_s: float) -> dict:
        async def expired() -> bool:
            stats = await stack.memory_stats()
            return self.engine not in {engine.engine_id for engine in stats.engines}

        await _until(expired, 60.0)
        expired_after_s = time.monotonic() - killed_s
        stats = await stack.memory_stats()
        await asyncio.sleep(max(0.0, observe_s - expired_after_s))
        return {
            "memory_expired_engine_after_s": expired_after_s,
            "host_blocks_used_after_expiry": stats.host.num_blocks_used,
            "ledger_consistent_after_expiry": stats.ledger_consistent,
        }

    async def picked_up(self, stack: ChaosStack, load: ClosedLoopLoad) -> float:
        baseline = (await stack.engine_stats(self.engine)).num_generated_tokens

        async def generating() -> bool:
            return (await stack.engine_stats(self.engine)).num_generated_tokens > baseline

        return await _until(generating, 60.0)
