"""The simulator's model runner: what EngineCore calls in place of the model, on a virtual clock.

    EngineCore.step:  schedule() -> [restores] -> runner.execute(output) -> update() -> record_step_time()
                                                       |
                      SimulatedRunner.execute:  clock += cost model's step time (+ swap stalls)
                                                returns EOS at a request's true length, a filler before

The engine core stays the production code: the simulator drives its `step()`, so the two cannot
drift apart. Deterministic: no wall clock, no randomness.
"""

from __future__ import annotations

from typing import Protocol

from services.bench.sim.kv_offload import OffloadCounters, SimKvOffload
from services.bench.sim.sim_request import SIM_EOS_TOKEN_ID
from services.engine.scheduler import SchedulerOutput, StepCostCoefficients

SAMPLED_TOKEN_ID = 0  # what the simulated model "samples" before a request's last token


class StepCost(Protocol):
    num_kv_blocks: int

    def step_time_s(self, output: SchedulerOutput) -> float: ...

    def linear_prior(self) -> StepCostCoefficients: ...


class VirtualClock:
    """Simulated time in seconds; the scheduler and the host tier read it by calling it."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class SimulatedRunner:
    """Runs no model: each step advances the clock by the cost model's time of the batch, plus the
    swap stalls charged to the step (swap-outs in schedule, swap-ins not yet arrived at its restores),
    and every sampling request gets a filler token, or EOS when it reaches its true output length.

    Invariant: the clock moves by exactly model_s + stall_s per step (one float addition), and the
    engine core's cost model is fed `last_model_s` as computed, not a difference of clock readings
    ((c + m) - c != m in floats), and without the stall (which does not scale with the batch)."""

    def __init__(
        self, cost: StepCost, clock: VirtualClock, true_lengths: dict[str, int], offload: SimKvOffload | None
    ) -> None:
        self._cost, self._clock, self._true_lengths, self._offload = cost, clock, true_lengths, offload
        self.last_model_s = 0.0  # simulated model time of the last step, s
        self.busy_s = 0.0  # virtual time spent in steps, swap stalls included, s

    def execute(self, output: SchedulerOutput) -> dict[str, int]:
        model_s = self._cost.step_time_s(output)
        step_s = model_s if self._offload is None else model_s + self._offload.take_step_stall_s()
        self._clock.now_s += step_s
        self.busy_s += step_s
        self.last_model_s = model_s
        return self._sampled(output)

    def model_time_s(self) -> float:
        """The engine core's model timer: the last step's simulated model time."""
        return self.last_model_s

    @property
    def offload_counters(self) -> OffloadCounters | None:
        """What the host tier did (None in recompute mode)."""
        return None if self._offload is None else self._offload.counters

    def forget(self, request_id: str) -> None:
        """Nothing to free: the simulated model keeps no per-request state."""

    def _sampled(self, output: SchedulerOutput) -> dict[str, int]:
        """EOS for a request about to produce its last true token, a filler token otherwise."""
        sampled = {}
        for chunk in output.chunks:
            if chunk.samples_token:
                request = chunk.request
                last = len(request.output_token_ids) + 1 >= self._true_lengths[request.request_id]
                sampled[request.request_id] = SIM_EOS_TOKEN_ID if last else SAMPLED_TOKEN_ID
        return sampled
