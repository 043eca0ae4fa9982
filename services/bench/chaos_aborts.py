"""An abort storm: streams cancelled by their clients at random points, then a leak check in every tier.

The engine's KV pool is kept scarce so that requests are preempted and swapped out to the memory
service's host tier and back while the storm goes on; each stream is cancelled after a random
delay (some before their first token: queued or in prefill; most while decoding, some of those
while swapped out or being restored). Afterwards nothing may be held anywhere:

    engine: num_kv_blocks_used == 0          memory: host blocks used == 0, ledger consistent

The phase of each abort is read from the stream (tokens seen or not); that swap-out and swap-in
happened during the storm is read from the engine's and the memory service's counters.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass

from services.bench.chaos_load import StreamOutcome, make_prompt, run_stream
from services.bench.chaos_stack import ChaosStack


@dataclass(frozen=True)
class AbortStormResult:
    """Figures of one storm (JSON-ready)."""

    num_aborted: int  # streams cancelled by their client
    num_completed: int  # streams that ended before their cancel time
    num_aborted_before_first_token: int  # queued or in prefill
    num_aborted_while_decoding: int
    num_swapped_out: int  # engine counters, during the storm
    num_restored: int
    num_restores_lost: int
    num_preemptions: int
    engine_blocks_used_after: dict[str, int]  # engine -> KV blocks still held (must be 0)
    host_blocks_used_after: int  # memory service host tier (must be 0)
    ledger_consistent: bool
    settle_s: float  # last cancel -> everything free
    wall_s: float

    @property
    def num_leaked(self) -> int:
        return sum(self.engine_blocks_used_after.values()) + self.host_blocks_used_after

    def to_json(self) -> dict:
        return {**asdict(self), "num_leaked": self.num_leaked}


async def _cancel_after(stub, outcome: StreamOutcome, delay_s: float) -> bool:
    """True when the stream was cancelled (it was still running at delay_s)."""
    task = asyncio.create_task(run_stream(stub, outcome, timeout_s=120.0))
    done, _ = await asyncio.wait({task}, timeout=delay_s)
    if done:
        return False
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return True


async def _engine_counters(stack: ChaosStack) -> dict[str, int]:
    totals = {"num_swapped_out": 0, "num_restored": 0, "num_restores_lost": 0, "num_preemptions": 0}
    for name in stack.engine_names:
        stats = await stack.engine_stats(name)
        for key in totals:
            totals[key] += getattr(stats, key)
    return totals


async def abort_storm(
    stack: ChaosStack, *, num_streams: int, concurrency: int, max_delay_s: float, seed: int = 0
) -> AbortStormResult:
    """num_streams streams, `concurrency` at a time, each cancelled after U(0, max_delay_s) seconds."""
    rng = random.Random(seed)
    stub = stack.gateway_stub()
    before = await _engine_counters(stack)
    began_s = time.monotonic()
    semaphore = asyncio.Semaphore(concurrency)
    cancelled: list[tuple[StreamOutcome, bool]] = []

    async def one(index: int) -> None:
        async with semaphore:
            outcome = StreamOutcome(
                index,
                make_prompt(rng, rng.randint(20, 120)),
                rng.randint(16, 160),
                rng.getrandbits(32),
                time.monotonic(),
            )
            cancelled.append((outcome, await _cancel_after(stub, outcome, rng.uniform(0.0, max_delay_s))))

    await asyncio.gather(*(one(index) for index in range(num_streams)))
    last_cancel_s = time.monotonic()
    engine_blocks, host_blocks, consistent = await _until_free(stack, timeout_s=30.0)
    after = await _engine_counters(stack)
    aborted = [outcome for outcome, was_cancelled in cancelled if was_cancelled]
    return AbortStormResult(
        num_aborted=len(aborted),
        num_completed=len(cancelled) - len(aborted),
        num_aborted_before_first_token=sum(not o.token_ids for o in aborted),
        num_aborted_while_decoding=sum(bool(o.token_ids) for o in aborted),
        **{key: after[key] - before[key] for key in after},
        engine_blocks_used_after=engine_blocks,
        host_blocks_used_after=host_blocks,
        ledger_consistent=consistent,
        settle_s=time.monotonic() - last_cancel_s,
        wall_s=time.monotonic() - began_s,
    )


async def _until_free(stack: ChaosStack, timeout_s: float) -> tuple[dict[str, int], int, bool]:
    """Polls until every engine block and host slot is free (or timeout); the last figures seen."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        engine_blocks = {name: (await stack.engine_stats(name)).num_kv_blocks_used for name in stack.engine_names}
        memory = await stack.memory_stats()
        free = not any(engine_blocks.values()) and memory.host.num_blocks_used == 0
        if free or time.monotonic() > deadline_s:
            return engine_blocks, memory.host.num_blocks_used, memory.ledger_consistent
        await asyncio.sleep(0.05)
