"""Small factories for engine tests: requests and schedulers with fake model outputs."""

from __future__ import annotations

import itertools

from services.engine.block_pool import KvBlockManager
from services.engine.length_distribution import LengthDistribution
from services.engine.request import Request, SamplingOptions
from services.engine.scheduler import OnlineStepCostModel, Scheduler, SchedulerLimits, SchedulerOutput, make_policy
from services.engine.scheduler.cost_model import StepCostCoefficients

EOS = 2
_arrivals = itertools.count()


def make_request(
    request_id: str, num_prompt_tokens: int, max_tokens: int = 8, *, arrival_time_s: float | None = None
) -> Request:
    sampling = SamplingOptions(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=False)
    arrival = float(next(_arrivals)) if arrival_time_s is None else arrival_time_s
    return Request(request_id, list(range(10, 10 + num_prompt_tokens)), sampling, arrival, float(max_tokens))


def make_decoding_request(request_id: str, prompt: list[int], output: list[int], max_tokens: int) -> Request:
    """A greedy request (EOS ignored) that has produced `output` and has one token left to feed: a decode."""
    sampling = SamplingOptions(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True)
    request = Request(request_id, prompt, sampling, 0.0, float(max_tokens))
    request.output_token_ids.extend(output)
    request.num_computed_tokens = request.num_tokens - 1
    return request


def make_predicted_request(
    request_id: str,
    num_prompt_tokens: int,
    *,
    max_tokens: int,
    predicted_tokens: float,
    arrival_time_s: float | None = None,
) -> Request:
    """A request whose prediction is log-normal-ish around predicted_tokens (p10 / p50 / p90)."""
    request = make_request(request_id, num_prompt_tokens, max_tokens, arrival_time_s=arrival_time_s)
    quantiles = [(0.1, predicted_tokens / 2), (0.5, predicted_tokens), (0.9, predicted_tokens * 2)]
    request.length_distribution = LengthDistribution(predicted_tokens * 1.1, quantiles)
    request.predicted_output_tokens = predicted_tokens * 1.1
    return request


class FakeClock:
    """A clock tests advance by hand."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


# Steps cost 10 ms plus 0.1 ms per fed token: a prompt token costs 1% of a decode step.
TEST_COSTS = StepCostCoefficients(base_s=0.010, per_token_s=1e-4, per_kv_token_s=0.0)


def make_scheduler(
    *,
    num_blocks: int = 64,
    block_size: int = 4,
    max_num_seqs: int = 8,
    token_budget: int = 64,
    max_model_len: int = 256,
    policy: str = "fcfs",
    max_wait_s: float = 60.0,
    clock=lambda: 0.0,
) -> Scheduler:
    kv = KvBlockManager(num_blocks, block_size)
    limits = SchedulerLimits(max_num_seqs, token_budget, max_model_len, max_wait_s)
    cost_model = OnlineStepCostModel(TEST_COSTS)
    return Scheduler(make_policy(policy, cost_model), limits, kv, eos_token_id=EOS, clock=clock, cost_model=cost_model)


def fake_model_outputs(output: SchedulerOutput, token_id: int = 7) -> dict[str, int]:
    """What the model runner would return: one token per request that samples this step."""
    return {chunk.request.request_id: token_id for chunk in output.chunks if chunk.samples_token}


def run_step(scheduler: Scheduler, token_id: int = 7):
    output = scheduler.schedule()
    return output, scheduler.update(output, fake_model_outputs(output, token_id))


def run_short_overload(scheduler: Scheduler, clock, num_steps: int, step_s: float, long_arrival_s: float = 0.0):
    """Two short arrivals per step (twice what two seats serve) behind one long request queued at
    long_arrival_s, for the worst-case-wait tests; returns when the long one started (None: not within
    num_steps) and (time, arrival) of every request that started before it."""
    scheduler.add(make_predicted_request("long", 4, max_tokens=50, predicted_tokens=40, arrival_time_s=long_arrival_s))
    started_at, overtaken_by = None, []
    for step in range(num_steps):
        for index in range(2):
            scheduler.add(
                make_predicted_request(
                    f"short{step}-{index}", 4, max_tokens=2, predicted_tokens=2, arrival_time_s=clock.now_s
                )
            )
        output, _ = run_step(scheduler)
        if started_at is None:
            if any(c.request.request_id == "long" for c in output.chunks):
                started_at = clock.now_s
            else:
                started = [c.request for c in output.chunks if c.request.first_scheduled_time_s == clock.now_s]
                overtaken_by += [(clock.now_s, r.arrival_time_s) for r in started]
        clock.now_s += step_s
    return started_at, overtaken_by
