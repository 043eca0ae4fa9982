"""An immutable snapshot of the engine's load, taken on the engine thread after each change.

gRPC handlers read the latest snapshot (one attribute read, atomic under the GIL) instead of
touching the scheduler's lists from another thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.spec_stats import SpecStatsSnapshot

NO_SPECULATION = SpecStatsSnapshot(0, 0, 0, 0)


@dataclass(frozen=True)
class EngineSnapshot:
    engine_id: str
    scheduler_policy: str
    num_running: int  # requests in the running batch
    num_waiting: int  # never-run requests waiting (excludes preempted)
    num_preempted: int  # preempted requests waiting to resume
    num_kv_blocks_total: int
    num_kv_blocks_used: int
    num_kv_blocks_free: int
    num_requests_holding_blocks: int
    predicted_outstanding_tokens: float  # sum of predicted remaining output tokens
    predicted_outstanding_work_s: float  # the same, at the drain rate
    seconds_per_output_token: float  # the drain rate: recent steps' wall time per sampled token (drain_rate.py)
    num_steps: int
    num_generated_tokens: int
    num_preemptions: int  # since start
    num_swapped_out: int  # preemptions whose KV went to the host tier
    num_restored: int  # resumes that got their swapped KV back
    num_restores_lost: int  # resumes whose swapped KV was gone (recomputed)
    num_recomputed_tokens: int  # KV tokens dropped by preemption, computed again
    speculative_method: SpeculativeMethod  # the drafter (off: spec is all zeros)
    spec: SpecStatsSnapshot  # speculative decoding's counters (spec/spec_stats.py)


def take_snapshot(core, engine_id: str, seconds_per_output_token: float) -> EngineSnapshot:
    """Reads the core's counters (engine thread only); the drain rate comes from drain_rate.DrainRate."""
    scheduler, speculator = core.scheduler, core.speculator
    pool = scheduler.kv.pool
    num_preempted = scheduler.num_preempted
    outstanding = scheduler.predicted_outstanding_tokens()
    return EngineSnapshot(
        engine_id=engine_id,
        scheduler_policy=scheduler.policy.name,
        num_running=len(scheduler.running),
        num_waiting=len(scheduler.waiting) - num_preempted,
        num_preempted=num_preempted,
        num_kv_blocks_total=pool.num_blocks_total,
        num_kv_blocks_used=pool.num_used_blocks,
        num_kv_blocks_free=pool.num_free_blocks,
        num_requests_holding_blocks=scheduler.kv.num_requests_holding_blocks,
        predicted_outstanding_tokens=outstanding,
        predicted_outstanding_work_s=outstanding * seconds_per_output_token,
        seconds_per_output_token=seconds_per_output_token,
        num_steps=core.num_steps,
        num_generated_tokens=core.num_generated_tokens,
        num_preemptions=scheduler.num_preemptions,
        num_swapped_out=scheduler.preempted_kv.num_swapped_out,
        num_restored=scheduler.preempted_kv.num_restored,
        num_restores_lost=scheduler.preempted_kv.num_restores_lost,
        num_recomputed_tokens=scheduler.num_recomputed_tokens,
        speculative_method=SpeculativeMethod.OFF if speculator is None else speculator.config.method,
        spec=NO_SPECULATION if speculator is None else speculator.stats.snapshot(),
    )
