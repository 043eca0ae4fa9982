"""Small factories for engine tests: requests and schedulers with fake model outputs."""

from __future__ import annotations

import itertools

from services.engine.block_pool import KvBlockManager
from services.engine.request import Request, SamplingOptions
from services.engine.scheduler import Scheduler, SchedulerLimits, SchedulerOutput, make_policy

EOS = 2
_arrivals = itertools.count()


def make_request(
    request_id: str, num_prompt_tokens: int, max_tokens: int = 8, *, arrival_time_s: float | None = None
) -> Request:
    sampling = SamplingOptions(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=False)
    arrival = float(next(_arrivals)) if arrival_time_s is None else arrival_time_s
    return Request(request_id, list(range(10, 10 + num_prompt_tokens)), sampling, arrival, float(max_tokens))


def make_scheduler(
    *, num_blocks: int = 64, block_size: int = 4, max_num_seqs: int = 8, token_budget: int = 64, max_model_len: int = 256
) -> Scheduler:
    kv = KvBlockManager(num_blocks, block_size)
    limits = SchedulerLimits(max_num_seqs, token_budget, max_model_len)
    return Scheduler(make_policy("fcfs"), limits, kv, eos_token_id=EOS, clock=lambda: 0.0)


def fake_model_outputs(output: SchedulerOutput, token_id: int = 7) -> dict[str, int]:
    """What the model runner would return: one token per request that samples this step."""
    return {chunk.request.request_id: token_id for chunk in output.chunks if chunk.samples_token}


def run_step(scheduler: Scheduler, token_id: int = 7):
    output = scheduler.schedule()
    return output, scheduler.update(output, fake_model_outputs(output, token_id))
