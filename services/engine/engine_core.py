"""One engine step, synchronous: schedule, run the model, apply the results.

No threads and no gRPC here, so tests drive it step by step (arrivals at chosen steps); the
threaded loop (engine_loop.py) calls `step()` repeatedly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.engine.request import Request
from services.engine.scheduler import Scheduler, StepResult

if TYPE_CHECKING:  # the simulator drives this core with its own runner and must not import torch
    from services.engine.model_runner import ModelRunner
    from services.engine.spec.speculator import Speculator


@dataclass(frozen=True)
class StepTiming:
    """Measured cost of one step, for the stats (and the cost model of the speculative scheduler)."""

    duration_s: float  # wall time of schedule (with swap-outs) + KV restores + forward + update
    model_s: float  # wall time of forward + update: what the scheduler's cost model is fitted on
    num_scheduled_tokens: int  # tokens fed to the model
    num_sampled_tokens: int  # output tokens produced


class EngineCore:
    """Scheduler + model runner."""

    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        *,
        model_timer: Callable[[], float] | None = None,
        speculator: Speculator | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.runner = runner
        self.speculator = speculator  # speculative decoding (spec/speculator.py); None = off
        scheduler.drafts_possible = speculator is not None  # only the speculator sets draft slots
        # The model time of the step just run, if the runner reports it (the simulator's: its cost
        # model's time as computed; a difference of virtual clock readings would round it). None: the
        # wall time of forward + update, measured here.
        self.model_timer = model_timer
        self.num_steps = 0
        self.num_generated_tokens = 0
        self.num_prompt_tokens = 0  # prompt tokens of every request added (the metrics' counter)
        self.last_step: StepTiming | None = None

    def add(self, request: Request) -> None:
        self.scheduler.add(request)
        self.num_prompt_tokens += len(request.prompt_token_ids)

    def abort(self, request_id: str) -> Request | None:
        request = self.scheduler.abort(request_id)
        if request is not None:
            self._forget(request_id)
        return request

    def _forget(self, request_id: str) -> None:
        self.runner.forget(request_id)
        if self.speculator is not None:
            self.speculator.forget(request_id)

    def step(self) -> Sequence[StepResult]:
        """Runs one iteration; returns per-request new tokens and finishes (may be empty). A steady decode
        step's results stay columns (scheduler/steady.py StepResults; the engine loop reads them so)."""
        started = time.perf_counter()
        speculator = self.speculator
        if speculator is not None:
            speculator.plan(self.scheduler.running)
        output = self.scheduler.schedule()
        for request_id in output.preempted_request_ids:  # their KV is gone: so are their batch rows
            self.runner.forget(request_id)
        if output.is_empty:
            return []
        if output.restores:  # swapped KV back into its new blocks before the model reads them
            self.scheduler.eviction.restore(output.restores)
        model_started = time.perf_counter()
        if speculator is not None and output.num_draft_tokens:
            samples = self.runner.execute_step(output)
            results = self.scheduler.update(output, samples.tokens, samples.verified)
            speculator.observe(output, samples.verified)
            num_sampled = sum(len(result.new_token_ids) for result in results)  # a finish may cut a verify short
        else:  # a runner that never verifies drafts needs only execute()
            sampled = self.runner.execute(output)
            results = self.scheduler.update(output, sampled)
            num_sampled = len(sampled)
        for request_id in self.scheduler.finished_request_ids:  # not a pass over every result
            self._forget(request_id)
        finished = time.perf_counter()
        model_s = finished - model_started if self.model_timer is None else self.model_timer()
        # Swap-outs (settled inside schedule) and restores depend on who was evicted, not on the
        # batch's tokens: fitting them into the step cost would blur it (the simulator does the same).
        self.scheduler.record_step_time(output, model_s)
        self.num_steps += 1
        self.num_generated_tokens += num_sampled
        self.last_step = StepTiming(finished - started, model_s, output.num_scheduled_tokens, num_sampled)
        return results
