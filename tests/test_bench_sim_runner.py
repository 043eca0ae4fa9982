"""The simulator drives the production EngineCore.step with SimulatedRunner: the virtual clock moves by
the cost model's step time (+ swap stalls), and the online cost model is fed that model time exactly."""

import numpy as np

from services.bench.sim.gpu_presets import PRESETS
from services.bench.sim.predictions import noisy_oracle_distributions
from services.bench.sim.sim_request import SIM_EOS_TOKEN_ID, make_sim_request
from services.bench.sim.sim_runner import SAMPLED_TOKEN_ID, SimulatedRunner, VirtualClock
from services.bench.sim.simulator import EngineShape, _engine_core
from services.bench.workload import TraceRequest
from services.engine.engine_core import EngineCore

COST = PRESETS["llama2-13b-a100-40g"]  # a small KV pool: preemption happens


def _trace(num_requests: int) -> list[TraceRequest]:
    rng = np.random.default_rng(0)
    prompts, outputs = rng.integers(8, 600, num_requests), rng.integers(2, 300, num_requests)
    return [TraceRequest(f"r{i}", None, int(p), int(o)) for i, (p, o) in enumerate(zip(prompts, outputs))]


def _core(trace, clock) -> tuple[EngineCore, SimulatedRunner]:
    core, runner = _engine_core(trace, policy="alise", cost=COST, shape=EngineShape(), offload=None, clock=clock)
    predictions, _ = noisy_oracle_distributions([t.num_output_tokens for t in trace], target_tau=0.6, seed=0)
    for item, prediction in zip(trace, predictions):
        core.add(
            make_sim_request(
                item.request_id,
                num_prompt_tokens=item.num_prompt_tokens,
                num_output_tokens=item.num_output_tokens,
                arrival_time_s=0.0,
                prediction=prediction,
            )
        )
    return core, runner


def test_each_step_moves_the_clock_by_the_model_time_and_feeds_it_to_the_cost_model_exactly():
    trace = _trace(200)
    clock = VirtualClock()
    core, runner = _core(trace, clock)
    cost_model = core.scheduler.cost_model
    observed: list[float] = []
    observe = cost_model.observe
    cost_model.observe = lambda num_tokens, num_kv, step_s: (
        observed.append(step_s),
        observe(num_tokens, num_kv, step_s),
    )
    lengths = {item.request_id: item.num_output_tokens for item in trace}
    finished: set[str] = set()
    model_times: list[float] = []
    while core.scheduler.has_work:
        before_s = clock.now_s
        for result in core.step():
            if result.finish_reason is not None:
                finished.add(result.request_id)
        assert clock.now_s == before_s + runner.last_model_s  # one float addition, no stall without offload
        assert core.last_step.model_s == runner.last_model_s
        model_times.append(runner.last_model_s)
    assert observed == model_times  # as computed, not (c + m) - c
    assert core.num_steps == len(model_times) and runner.busy_s == sum(model_times)
    assert finished == set(lengths)
    assert core.scheduler.num_preemptions > 0  # the KV pool is small: preemption is exercised


class _Stalls:
    """The host tier's side the runner reads: a swap stall charged to each step."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s

    def take_step_stall_s(self) -> float:
        return self.stall_s


def test_swap_stalls_move_the_clock_but_not_the_model_time_and_eos_comes_at_the_true_length():
    trace = [TraceRequest("a", None, 20, 3)]
    clock = VirtualClock()
    core, _ = _core(trace, clock)
    runner = SimulatedRunner(COST, clock, {"a": 3}, _Stalls(0.25))  # type: ignore[arg-type]
    core = EngineCore(core.scheduler, runner, model_timer=runner.model_time_s)
    tokens = []
    while core.scheduler.has_work:
        before_s = clock.now_s
        tokens += [token for result in core.step() for token in result.new_token_ids]
        assert clock.now_s == before_s + (runner.last_model_s + 0.25)
        assert core.last_step.model_s == runner.last_model_s
    assert tokens == [SAMPLED_TOKEN_ID, SAMPLED_TOKEN_ID, SIM_EOS_TOKEN_ID]
