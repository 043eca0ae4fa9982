"""Swap preemption end to end: the real engine core and model, the real memory service over gRPC.

A small KV pool forces preemptions; the memory service plans each event, the engine writes the
victims' KV into the shared region and brings it back before they run again. Greedy tokens must be
exactly those of a run without preemption (full-precision swaps are bit-exact), a memory service
killed mid-run must cost recompute and no request, and aborted swapped requests free their slots.
"""

import asyncio

import grpc
import pytest
import pytest_asyncio
import torch

from services.common.contracts import memory_service_pb2 as pb
from services.common.contracts import memory_service_pb2_grpc as rpc
from services.engine.kv_offload.memory_client import MemoryClient
from services.engine.kv_offload.offloader import KvOffloader
from services.engine.request import Request
from services.memory import app as memory_app
from services.memory.config import MemoryConfig
from tests.engine_model import greedy, make_core, new_request, run_to_completion

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT_LENGTHS = (5, 37, 12, 40, 1, 23)
ARRIVAL_STEPS = (0, 0, 3, 6, 7, 10)
MAX_TOKENS = 16
BLOCK_SIZE = 8
SCARCE_BLOCKS = 12  # 96 positions for ~210 wanted at the peak: preemptions must happen


def _memory_config() -> MemoryConfig:
    """An error budget of 0 allows only bit-exact (full precision) swaps: greedy tokens must not change."""
    return MemoryConfig(
        port=0,
        host_tier_capacity_bytes=64 * 1024 * 1024,
        host_tier_block_bytes=64 * 1024,
        report_interval_s=0.5,
        stale_after_s=30.0,
        max_kv_relative_error=0.0,
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def memory():
    handle = await memory_app.start(_memory_config())
    yield handle
    await handle.stop(0)


def _arrivals() -> dict[int, list[Request]]:
    generator = torch.Generator().manual_seed(3)
    arrivals: dict[int, list[Request]] = {}
    for index, (length, step) in enumerate(zip(PROMPT_LENGTHS, ARRIVAL_STEPS)):
        prompt = torch.randint(3, 32000, (length,), generator=generator).tolist()
        arrivals.setdefault(step, []).append(new_request(f"r{index}", prompt, greedy(MAX_TOKENS)))
    return arrivals


def _swapping_core(address: str, engine_id: str, num_blocks: int):
    """An engine core whose preemptions are negotiated with the memory service at `address`."""
    core = make_core(num_blocks=num_blocks, block_size=BLOCK_SIZE, token_budget=32)
    client = MemoryClient(address, engine_id, timeout_s=2.0)
    shape = core.runner.cache_shape
    layout = pb.KvBlockLayout(
        block_size_tokens=BLOCK_SIZE,
        num_layers=shape.num_layers,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        dtype=pb.KV_DTYPE_FLOAT32,
        block_bytes=shape.block_bytes(torch.float32),
    )
    reply = client.stub.RegisterEngine(
        pb.RegisterEngineRequest(
            engine_id=engine_id, address="test", model_name="default", num_device_blocks=num_blocks, layout=layout
        )
    )
    offloader = KvOffloader(core.runner.cache, client)
    offloader.attach_region(reply.host_region)
    core.scheduler.eviction = offloader
    return core, offloader


async def _stats(address: str) -> pb.MemoryServiceGetStatsResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await rpc.MemoryServiceStub(channel).GetStats(pb.MemoryServiceGetStatsRequest())


async def test_swap_preemption_gives_exactly_the_tokens_of_a_run_without_preemption(memory):
    reference = await asyncio.to_thread(
        run_to_completion, make_core(num_blocks=256, block_size=BLOCK_SIZE, token_budget=32), _arrivals()
    )
    core, offloader = await asyncio.to_thread(_swapping_core, memory.address, "swap-exact", SCARCE_BLOCKS)
    outputs = await asyncio.to_thread(run_to_completion, core, _arrivals())
    await asyncio.to_thread(offloader.close)

    assert outputs == reference
    scheduler = core.scheduler
    assert (
        scheduler.preempted_kv.num_swapped_out > 0
        and scheduler.preempted_kv.num_restored == scheduler.preempted_kv.num_swapped_out
    )
    assert scheduler.preempted_kv.num_restores_lost == 0
    # (A victim whose swap would stall longer than recomputing it recomputes: timing-dependent.)
    assert scheduler.kv.pool.num_free_blocks == SCARCE_BLOCKS
    stats = await _stats(memory.address)
    assert stats.swap_counters.num_swapped_full == scheduler.preempted_kv.num_swapped_out
    assert stats.swap_counters.num_swapped_int8 == stats.swap_counters.num_swapped_int4 == 0
    assert stats.host.num_blocks_used == 0 and stats.ledger_consistent, list(stats.ledger_violations)


async def test_memory_service_killed_mid_run_costs_recompute_and_no_request():
    doomed = await memory_app.start(_memory_config())
    core, offloader = await asyncio.to_thread(_swapping_core, doomed.address, "swap-fault", SCARCE_BLOCKS)
    arrivals = _arrivals()
    outputs: dict[str, list[int]] = {}
    for step in range(500):  # until some KV sits in the memory service's host tier
        for request in arrivals.pop(step, []):
            core.add(request)
        for result in await asyncio.to_thread(core.step):
            outputs.setdefault(result.request_id, []).extend(result.new_token_ids)
        if any(r.num_host_kv_tokens for r in core.scheduler.waiting):
            break
    await doomed.stop(0)  # killed with swapped KV in its host tier
    num_preemptions_at_kill = core.scheduler.num_preemptions
    later = {arrival_step - step - 1: requests for arrival_step, requests in arrivals.items()} or {0: []}
    for request_id, tokens in (await asyncio.to_thread(run_to_completion, core, later)).items():
        outputs.setdefault(request_id, []).extend(tokens)
    await asyncio.to_thread(offloader.close)

    assert sorted(outputs) == [f"r{i}" for i in range(len(PROMPT_LENGTHS))]
    assert all(len(tokens) == MAX_TOKENS for tokens in outputs.values())
    assert core.scheduler.kv.pool.num_free_blocks == SCARCE_BLOCKS
    if core.scheduler.num_preemptions > num_preemptions_at_kill:  # later evictions fell back to recompute
        assert offloader.client.num_failed_calls > 0


async def test_aborting_swapped_requests_frees_their_host_slots(memory):
    core, offloader = await asyncio.to_thread(_swapping_core, memory.address, "swap-abort", SCARCE_BLOCKS)

    def run_until_swapped() -> list[str]:
        arrivals = _arrivals()
        for step in range(500):
            for request in arrivals.pop(step, []):
                core.add(request)
            core.step()
            swapped = [r.request_id for r in core.scheduler.waiting if r.num_host_kv_tokens]
            if swapped:
                return swapped
        raise AssertionError("no request was swapped out")

    swapped = await asyncio.to_thread(run_until_swapped)
    held = await _stats(memory.address)
    assert held.host.num_blocks_used > 0
    for request_id in list(core.scheduler.requests):
        core.abort(request_id)
    await asyncio.to_thread(offloader.close)  # waits for the background releases

    stats = await _stats(memory.address)
    assert swapped and stats.host.num_blocks_used == 0 and stats.ledger_consistent
    assert core.scheduler.kv.pool.num_free_blocks == SCARCE_BLOCKS


async def test_a_failed_release_is_sent_again_and_its_slots_freed(memory):
    """A ReleaseSwapped that fails (a slow memory service under load: DEADLINE_EXCEEDED) used to be
    dropped, and its host slots stayed taken for good (the 10-minute soak ended with 8 of them)."""
    core, offloader = await asyncio.to_thread(_swapping_core, memory.address, "swap-retry", SCARCE_BLOCKS)
    release, attempts = offloader.client.release, []

    def release_failing_once(request_ids: list[str]) -> bool:
        attempts.append(list(request_ids))
        return len(attempts) > 1 and release(request_ids)

    offloader.client.release = release_failing_once

    def run_until_swapped() -> None:
        arrivals = _arrivals()
        for step in range(500):
            for request in arrivals.pop(step, []):
                core.add(request)
            core.step()
            if any(r.num_host_kv_tokens for r in core.scheduler.waiting):
                return
        raise AssertionError("no request was swapped out")

    await asyncio.to_thread(run_until_swapped)
    for request_id in list(core.scheduler.requests):
        core.abort(request_id)
    while not attempts:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert (await _stats(memory.address)).host.num_blocks_used > 0  # the failed release freed nothing

    offloader.retry_failed_releases()  # what the memory reporter does after each report
    await asyncio.to_thread(offloader.close)  # waits for the background calls

    stats = await _stats(memory.address)
    assert len(attempts) >= 2 and set(attempts[0]) <= set(attempts[-1])  # the failed ids were sent again
    assert stats.host.num_blocks_used == 0 and stats.ledger_consistent


async def test_slots_reserved_or_committed_behind_a_lost_reply_are_given_back(memory):
    """A PlanEviction or CommitSwapOut whose reply is lost (the engine's deadline passed while the
    service acted: a starved engine under load) left slots reserved or committed that no one would
    release: the 30-minute soak ended with 4 taken after its engines were starved."""
    core, offloader = await asyncio.to_thread(_swapping_core, memory.address, "swap-lost-reply", SCARCE_BLOCKS)
    client, lost = offloader.client, []
    plan, commit = client.plan, client.commit

    def plan_reply_lost_once(victims, qualities):
        decisions = plan(victims, qualities)
        if not lost and decisions is not None and any(d.swap for d in decisions):
            lost.append("plan")
            return None
        return decisions

    def commit_reply_lost_once(request_ids):
        committed = commit(request_ids)
        if "commit" not in lost and committed:
            lost.append("commit")
            return None
        return committed

    client.plan, client.commit = plan_reply_lost_once, commit_reply_lost_once
    await asyncio.to_thread(run_to_completion, core, _arrivals())
    assert lost == ["plan", "commit"]  # both replies were lost after the service had acted
    await asyncio.to_thread(offloader.close)  # waits for the background releases

    stats = await _stats(memory.address)
    assert stats.host.num_blocks_used == 0 and stats.ledger_consistent
