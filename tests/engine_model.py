"""The default random-weight model, built once per test session, and an engine core around it."""

from __future__ import annotations

import functools
import time

import torch

from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine.block_pool import KvBlockManager
from services.engine.engine_core import EngineCore
from services.engine.model_loader import LoadedModel, load_model
from services.engine.model_runner import ModelRunner
from services.engine.request import Request, SamplingOptions
from services.engine.scheduler import Scheduler, SchedulerLimits, make_policy


@functools.lru_cache(maxsize=1)
def default_model() -> LoadedModel:
    torch.set_num_threads(1)  # CI has 2 cores shared with other tests; OpenMP spinning is far slower
    return load_model(DUMMY_TINY_MODEL, dtype=torch.float32, device=torch.device("cpu"), seed=0)


def make_core(*, num_blocks: int, block_size: int, token_budget: int, max_num_seqs: int = 8) -> EngineCore:
    loaded = default_model()
    kv = KvBlockManager(num_blocks, block_size)
    limits = SchedulerLimits(max_num_seqs, token_budget, loaded.max_context_tokens)
    scheduler = Scheduler(make_policy("fcfs"), limits, kv, loaded.eos_token_id)
    return EngineCore(scheduler, ModelRunner(loaded.model, kv, num_blocks))


def greedy(max_tokens: int) -> SamplingOptions:
    return SamplingOptions(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True)


def run_to_completion(
    core: EngineCore, arrivals: dict[int, list[Request]], max_steps: int = 2000
) -> dict[str, list[int]]:
    """Adds each request at its step, steps until all are done; returns output ids per request."""
    outputs: dict[str, list[int]] = {}
    last_arrival = max(arrivals)
    for step in range(max_steps):
        for request in arrivals.get(step, []):
            core.add(request)
        for result in core.step():
            outputs.setdefault(result.request_id, []).extend(result.new_token_ids)
        if step >= last_arrival and not core.scheduler.has_work:
            return outputs
    raise AssertionError(f"requests still running after {max_steps} steps")


def new_request(request_id: str, prompt: list[int], options: SamplingOptions) -> Request:
    return Request(request_id, prompt, options, time.monotonic(), float(options.max_tokens))
