"""The readmission headroom (scheduler.py, step 3): a preempted request comes back only while the running
batch keeps room to grow, so the next KV shortage does not evict it again at once."""

from __future__ import annotations

import dataclasses

import pytest

from services.engine.block_pool import KvBlockManager
from services.engine.config import EngineConfig
from services.engine.scheduler import OnlineStepCostModel, Scheduler, SchedulerLimits, make_policy
from services.engine.scheduler.speculative_policy import DEFAULT_READMIT_HEADROOM_TOKENS
from tests.engine_factories import EOS, TEST_COSTS, make_request, run_step

BLOCK_SIZE = 4


def _scheduler(policy: str, headroom: int | None, num_blocks: int = 12) -> Scheduler:
    kv = KvBlockManager(num_blocks, BLOCK_SIZE)
    limits = SchedulerLimits(8, 64, 256, readmit_headroom_tokens=headroom)
    cost_model = OnlineStepCostModel(TEST_COSTS)
    return Scheduler(make_policy(policy, cost_model), limits, kv, eos_token_id=EOS, cost_model=cost_model)


def _three_running_then(scheduler: Scheduler, request_id: str, *, num_preemptions: int):
    """Three running requests of 6 prompt tokens (2 blocks each, room for their next decode: 6 of the 12
    blocks stay free), then a waiting request of 8 tokens preempted num_preemptions times (its KV dropped)."""
    for index in range(3):
        scheduler.add(make_request(f"run{index}", 6, max_tokens=50))
    run_step(scheduler)
    assert len(scheduler.running) == 3 and scheduler.kv.pool.num_free_blocks == 6
    waiting = make_request(request_id, 8, max_tokens=50)
    waiting.num_preemptions = num_preemptions
    scheduler.add(waiting)
    return waiting


def _admitted(scheduler: Scheduler, request_id: str) -> bool:
    output, _ = run_step(scheduler)
    return any(chunk.request.request_id == request_id for chunk in output.chunks)


@pytest.mark.parametrize(
    ("headroom", "num_preemptions", "admitted"),
    [
        (16, 1, False),  # needs 2 blocks + ceil(3 x 16 / 4) = 12 kept free > 6 free: held
        (4, 1, True),  # 2 + 3 <= 6: room for the batch's next 4 tokens each is left
        (16, 0, True),  # a fresh request is admitted as it fits: the headroom is for victims only
        (0, 1, True),  # no headroom: as soon as its own blocks fit (vLLM's behaviour)
    ],
)
def test_a_victim_is_readmitted_only_with_headroom_left(headroom: int, num_preemptions: int, admitted: bool) -> None:
    scheduler = _scheduler("fcfs", headroom)
    _three_running_then(scheduler, "victim", num_preemptions=num_preemptions)
    free_before = scheduler.kv.pool.num_free_blocks
    assert _admitted(scheduler, "victim") is admitted
    assert scheduler.kv.pool.num_free_blocks == free_before - (2 if admitted else 0)


def test_a_held_victim_comes_back_once_the_batch_frees_room() -> None:
    scheduler = _scheduler("fcfs", 16)
    victim = _three_running_then(scheduler, "victim", num_preemptions=1)
    assert not _admitted(scheduler, "victim")
    for index in range(3):
        scheduler.abort(f"run{index}")
    assert _admitted(scheduler, "victim") and victim in scheduler.running


def test_a_promoted_victim_keeps_its_worst_case_wait() -> None:
    """Promotion (max_wait_s) bounds every wait: a promoted victim is not held for headroom."""
    scheduler = _scheduler("fcfs", 16)
    victim = _three_running_then(scheduler, "victim", num_preemptions=1)
    victim.promoted_at_s = 0.0
    assert _admitted(scheduler, "victim")


def test_the_limit_overrides_the_policy_default() -> None:
    assert make_policy("fcfs").readmit_headroom_tokens == make_policy("mlfq").readmit_headroom_tokens == 0
    for name in ("alise", "srpt-oracle"):
        assert make_policy(name).readmit_headroom_tokens == DEFAULT_READMIT_HEADROOM_TOKENS > 0
        assert _scheduler(name, None).readmit_headroom_tokens == DEFAULT_READMIT_HEADROOM_TOKENS
        assert _scheduler(name, 0).readmit_headroom_tokens == 0
    assert _scheduler("fcfs", None).readmit_headroom_tokens == 0
    assert _scheduler("fcfs", 24).readmit_headroom_tokens == 24
    with pytest.raises(ValueError, match="readmit_headroom_tokens"):
        SchedulerLimits(8, 64, 256, readmit_headroom_tokens=-1)


def test_engine_flag() -> None:
    assert EngineConfig().readmit_headroom_tokens is None
    assert EngineConfig.from_args(["--readmit-headroom-tokens", "0"]).readmit_headroom_tokens == 0
    with pytest.raises(ValueError, match="readmit_headroom_tokens"):
        dataclasses.replace(EngineConfig(), readmit_headroom_tokens=-2)
    with pytest.raises(SystemExit):
        EngineConfig.from_args(["--readmit-headroom-tokens", "-1"])
