"""The discrete-event simulator: the engine's own EngineCore and Scheduler, on a virtual clock, with a GPU cost model.

    arrivals (trace + Poisson/gamma times) --> EngineCore.add at their virtual time
    loop: core.step()   (schedule; restores; SimulatedRunner.execute: clock += cost model's step time
                         + swap stalls, fake tokens; update; record_step_time with the model time)

Nothing but the model forward is simulated (sim_runner.py): the engine core's step, admission,
chunked prefill, KV blocks, preemption, re-estimation, starvation promotion and the online step-cost
calibration are the production code. Each request produces exactly its trace's output length: the
simulated model samples EOS at that length, and max_tokens is left at what the context allows, so only
srpt-oracle (whose requests carry max_tokens = true length) knows it. Deterministic: no wall clock,
no randomness inside the loop.

Closed loop (capacity runs, steady_state.py): with closed_loop_concurrency=N the trace's arrival
times are ignored; N requests enter at time 0 and each finish lets the next one in at that instant,
so N requests are always in the system (until the trace runs out). Its arrival time is set when it
enters, so TTFT and fcfs order mean the same as in an open-loop run.

KV offload (kv_offload.py): with a swap mode, preempted KV goes to a simulated host tier as the
memory manager's plan decides; its swap-out and not-yet-prefetched swap-in stall the step in which
they happen (added to the step's time). The online cost model is fed the model time alone: a
swap stall does not scale with tokens or KV read, and would only blur the fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from services.bench.latency_metrics import RequestRecord
from services.bench.sim.gpu_presets import BLOCK_SIZE_TOKENS
from services.bench.sim.kv_offload import KvOffloadConfig, OffloadCounters, make_handler
from services.bench.sim.sim_request import SIM_EOS_TOKEN_ID, make_sim_request
from services.bench.sim.sim_runner import SimulatedRunner, StepCost, VirtualClock
from services.bench.workload import TraceRequest
from services.engine.block_pool import KvBlockManager
from services.engine.engine_core import EngineCore
from services.engine.length_distribution import LengthDistribution
from services.engine.request import Request
from services.engine.scheduler import (
    OnlineStepCostModel,
    Scheduler,
    SchedulerLimits,
    make_policy,
)
from services.engine.scheduler.speculative_policy import (
    DEFAULT_AGING_HORIZON_S,
    DEFAULT_TTFT_LEAD_S,
    DEFAULT_TTFT_TARGET_S,
    AlisePolicy,
)

ORACLE_POLICY = "srpt-oracle"
__all__ = ["EngineShape", "SimResult", "StepCost", "simulate"]  # StepCost: sim_runner.py's, re-exported


@dataclass(frozen=True)
class EngineShape:
    """The simulated engine's limits (the engine's flags of the same names)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    max_wait_s: float = 60.0
    aging_horizon_s: float = (
        DEFAULT_AGING_HORIZON_S  # alise / srpt-oracle TTFT aging (speculative_policy.py); inf = off
    )
    ttft_target_s: float = DEFAULT_TTFT_TARGET_S  # alise / srpt-oracle TTFT-slack promotion; inf = off
    ttft_lead_s: float = DEFAULT_TTFT_LEAD_S  # ... urgent from this long before the target
    readmit_headroom_tokens: int | None = None  # the scheduler's readmission headroom; None: the policy's


@dataclass(frozen=True)
class SimResult:
    """One policy at one arrival sequence."""

    records: list[RequestRecord]  # finished requests
    num_steps: int
    num_preemptions: int
    num_recomputed_tokens: int  # KV tokens dropped by preemption and computed again (wasted work)
    max_wait_s: float  # longest wait from (re)queueing to running, s
    kv_swap_bytes: int  # bytes swapped out to the host tier (0 in recompute mode)
    num_rejected: int  # requests that could never fit the KV pool (not simulated)
    busy_s: float  # virtual time the engine spent in steps (swap stalls included)
    offload: OffloadCounters | None = None  # what the host tier did (None in recompute mode)


def simulate(
    trace: Sequence[TraceRequest],
    arrivals_s: Sequence[float],
    predictions: Sequence[LengthDistribution],
    *,
    policy: str,
    cost: StepCost,
    shape: EngineShape,
    offload: KvOffloadConfig | None = None,
    closed_loop_concurrency: int | None = None,
) -> SimResult:
    """Runs every request of the trace to completion under `policy` (and the offload mode, if any);
    closed_loop_concurrency=N keeps N requests in the system instead (see the module docstring)."""
    clock = VirtualClock()
    core, runner = _engine_core(trace, policy=policy, cost=cost, shape=shape, offload=offload, clock=clock)
    scheduler = core.scheduler
    pending = _requests(trace, arrivals_s, predictions, scheduler, reveal_length=policy == ORACLE_POLICY)
    feeder = _OpenLoop(pending) if closed_loop_concurrency is None else _ClosedLoop(pending, closed_loop_concurrency)
    live: dict[str, Request] = {}
    records: list[RequestRecord] = []
    while feeder.has_more or scheduler.has_work:
        for request in feeder.due(clock.now_s):
            core.add(request)
            live[request.request_id] = request
        if not scheduler.has_work:
            clock.now_s = feeder.next_arrival_s
            continue
        num_steps = core.num_steps
        results = core.step()
        if core.num_steps == num_steps:  # the step scheduled nothing
            raise RuntimeError("the scheduler made no progress with work queued (a request cannot fit?)")
        for result in results:
            if result.finish_reason is not None:
                records.append(_record(live.pop(result.request_id)))
                feeder.finished()
    counters = runner.offload_counters
    return SimResult(
        records,
        core.num_steps,
        scheduler.num_preemptions,
        scheduler.num_recomputed_tokens,
        scheduler.max_wait_s,
        0 if counters is None else counters.swap_out_bytes,
        len(trace) - len(pending),
        runner.busy_s,
        counters,
    )


def _engine_core(
    trace: Sequence[TraceRequest],
    *,
    policy: str,
    cost: StepCost,
    shape: EngineShape,
    offload: KvOffloadConfig | None,
    clock: VirtualClock,
) -> tuple[EngineCore, SimulatedRunner]:
    """The production EngineCore over a scheduler on the virtual clock and the simulated runner; the
    core's model timer is the runner's (the cost model's time as computed, see sim_runner.py)."""
    cost_model = OnlineStepCostModel(cost.linear_prior())
    limits = SchedulerLimits(
        shape.max_num_seqs,
        shape.max_num_batched_tokens,
        shape.max_model_len,
        shape.max_wait_s,
        shape.readmit_headroom_tokens,
    )
    kv = KvBlockManager(cost.num_kv_blocks, BLOCK_SIZE_TOKENS)
    handler = make_handler(offload, clock)
    scheduler = Scheduler(
        _make_policy(policy, cost_model, shape), limits, kv, SIM_EOS_TOKEN_ID, clock, cost_model, eviction=handler
    )
    true_lengths = {item.request_id: item.num_output_tokens for item in trace}
    runner = SimulatedRunner(cost, clock, true_lengths, handler)
    return EngineCore(scheduler, runner, model_timer=runner.model_time_s), runner


def _make_policy(name: str, cost_model: OnlineStepCostModel, shape: EngineShape):
    """The named policy; alise and srpt-oracle with the shape's TTFT aging horizon and TTFT-slack promotion."""
    policy = make_policy(name, cost_model)
    if isinstance(policy, AlisePolicy):
        lead_s = min(shape.ttft_lead_s, shape.ttft_target_s)
        policy = type(policy)(cost_model, shape.aging_horizon_s, shape.ttft_target_s, lead_s)
    return policy


class _OpenLoop:
    """Requests enter at their arrival times (sorted)."""

    def __init__(self, pending: list[Request]) -> None:
        self._pending, self._next = pending, 0

    @property
    def has_more(self) -> bool:
        return self._next < len(self._pending)

    @property
    def next_arrival_s(self) -> float:
        return self._pending[self._next].arrival_time_s

    def due(self, now_s: float) -> list[Request]:
        start = self._next
        while self._next < len(self._pending) and self._pending[self._next].arrival_time_s <= now_s:
            self._next += 1
        return self._pending[start : self._next]

    def finished(self) -> None:
        pass


class _ClosedLoop(_OpenLoop):
    """Keeps `concurrency` requests in the system: each finish lets the next request in, arriving now."""

    def __init__(self, pending: list[Request], concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"closed_loop_concurrency must be >= 1, got {concurrency}")
        super().__init__(pending)
        self._concurrency, self._in_system = concurrency, 0

    @property
    def next_arrival_s(self) -> float:
        raise RuntimeError("a closed loop with requests left never idles")

    def due(self, now_s: float) -> list[Request]:
        start = self._next
        self._next = min(len(self._pending), self._next + self._concurrency - self._in_system)
        for request in self._pending[start : self._next]:
            request.arrival_time_s = now_s
        self._in_system += self._next - start
        return self._pending[start : self._next]

    def finished(self) -> None:
        self._in_system -= 1


def _requests(trace, arrivals_s, predictions, scheduler: Scheduler, *, reveal_length: bool) -> list[Request]:
    if not len(trace) == len(arrivals_s) == len(predictions):
        raise ValueError("trace, arrivals and predictions must have the same length")
    requests = []
    for item, arrival_s, prediction in zip(trace, arrivals_s, predictions):
        if not scheduler.can_ever_fit(item.num_prompt_tokens, item.num_output_tokens):
            continue
        requests.append(
            make_sim_request(
                item.request_id,
                num_prompt_tokens=item.num_prompt_tokens,
                num_output_tokens=item.num_output_tokens,
                arrival_time_s=arrival_s,
                prediction=prediction,
                reveal_length=reveal_length,
                max_model_len=scheduler.limits.max_model_len,
            )
        )
    return sorted(requests, key=lambda request: request.arrival_time_s)


def _record(request: Request) -> RequestRecord:
    return RequestRecord(
        request_id=request.request_id,
        arrival_s=request.arrival_time_s,
        first_token_s=request.first_token_time_s,
        finish_s=request.finish_time_s,
        num_prompt_tokens=request.num_prompt_tokens,
        num_output_tokens=request.num_output_tokens,
        num_preemptions=request.num_preemptions,
    )
