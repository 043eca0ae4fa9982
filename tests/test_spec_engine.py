"""Speculative decoding end to end in the engine core (tiny random model, CPU): greedy output identical
token for token to decoding without drafts, with n-gram and early-exit drafters, mixed batches of
prefill chunks, decodes and verifies, preemption mid-draft; nothing leaked after random aborts."""

from __future__ import annotations

import os
import random

import pytest
import torch

from services.engine.block_pool import KvBlockManager
from services.engine.engine_core import EngineCore
from services.engine.model_runner import ModelRunner
from services.engine.request import Request, SamplingOptions
from services.engine.scheduler import OnlineStepCostModel, Scheduler, SchedulerLimits, make_policy
from services.engine.spec.engine_setup import make_speculator
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.spec_config import SpeculativeConfig
from tests.engine_model import default_model, greedy, new_request, run_to_completion

MAX_TOKENS = 40
# The leak check is 1,000 speculative requests cancelled at random points (about 100 s here:
# ALISE_SPEC_ABORT_REQUESTS=1000); CI runs 200.
NUM_ABORT_REQUESTS = int(os.environ.get("ALISE_SPEC_ABORT_REQUESTS", "200"))


def _core(spec: SpeculativeConfig, *, num_blocks: int = 256, token_budget: int = 48) -> EngineCore:
    loaded = default_model()
    kv = KvBlockManager(num_blocks, 8)
    limits = SchedulerLimits(8, token_budget, loaded.max_context_tokens)
    cost_model = OnlineStepCostModel()
    scheduler = Scheduler(make_policy("fcfs", cost_model), limits, kv, loaded.eos_token_id, cost_model=cost_model)
    runner = ModelRunner(loaded.model, kv, num_blocks)
    speculator = make_speculator(spec, cost_model, loaded.max_context_tokens, runner, loaded.model, "dummy-llama-tiny")
    return EngineCore(scheduler, runner, speculator=speculator)


def _prompts(seed: int = 3) -> list[list[int]]:
    """Repetitive prompts (prompt lookup finds matches) and random ones, of mixed lengths."""
    generator = torch.Generator().manual_seed(seed)
    motif = torch.randint(3, 32000, (9,), generator=generator).tolist()
    randoms = [torch.randint(3, 32000, (n,), generator=generator).tolist() for n in (5, 31, 17)]
    return [motif * 4, randoms[0], motif * 2 + randoms[1], randoms[2], motif * 3]


def _run(spec: SpeculativeConfig, options: SamplingOptions, **core_args) -> tuple[dict[str, list[int]], EngineCore]:
    core = _core(spec, **core_args)
    arrivals: dict[int, list[Request]] = {}
    for index, (prompt, step) in enumerate(zip(_prompts(), (0, 0, 2, 5, 9))):
        arrivals.setdefault(step, []).append(new_request(f"r{index}", prompt, options))
    outputs = run_to_completion(core, arrivals)
    assert core.scheduler.kv.pool.num_free_blocks == core.scheduler.kv.pool.num_blocks_total
    assert core.runner.batch.num_rows == 0
    return outputs, core


@pytest.fixture(scope="module")
def plain_greedy() -> dict[str, list[int]]:
    return _run(SpeculativeConfig(), greedy(MAX_TOKENS))[0]


@pytest.mark.parametrize(
    "spec",
    [
        SpeculativeConfig(SpeculativeMethod.NGRAM, 4),
        SpeculativeConfig(SpeculativeMethod.EARLY_EXIT, 3, early_exit_layer=4),  # the whole model drafts
        SpeculativeConfig(SpeculativeMethod.EARLY_EXIT, 2, early_exit_layer=1),  # mostly rejected
    ],
    ids=["ngram", "early-exit-full-depth", "early-exit-layer-1"],
)
def test_greedy_output_with_speculation_is_identical(spec, plain_greedy):
    outputs, core = _run(spec, greedy(MAX_TOKENS))
    assert outputs == plain_greedy
    stats = core.speculator.stats
    assert stats.num_draft_tokens > 0
    if spec.early_exit_layer == 4:  # drafting with the full model: every draft is the target's argmax
        assert stats.acceptance_rate > 0.9


def test_preemption_mid_draft_keeps_greedy_output_identical(plain_greedy):
    # 14 blocks x 8 = 112 positions for ~330 at peak: preemptions (recompute) while drafts are live.
    outputs, core = _run(
        SpeculativeConfig(SpeculativeMethod.EARLY_EXIT, 3, early_exit_layer=4), greedy(MAX_TOKENS), num_blocks=14
    )
    assert core.scheduler.num_preemptions > 0
    assert outputs == plain_greedy


def test_sampled_requests_verify_and_stay_reproducible_per_seed():
    # The random model's logits are flat: a low temperature and top-k give drafts (argmaxes) real mass.
    options = SamplingOptions(max_tokens=MAX_TOKENS, temperature=0.01, top_p=0.95, top_k=3, seed=11, ignore_eos=True)
    spec = SpeculativeConfig(SpeculativeMethod.EARLY_EXIT, 3, early_exit_layer=4)
    first, core = _run(spec, options)
    second, _ = _run(spec, options)
    assert first == second
    assert all(len(tokens) == MAX_TOKENS for tokens in first.values())
    assert core.speculator.stats.num_accepted_tokens > 0


def test_opted_out_requests_never_draft():
    options = SamplingOptions(
        max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True, speculative=False
    )
    _, core = _run(SpeculativeConfig(SpeculativeMethod.EARLY_EXIT, 3, early_exit_layer=4), options)
    assert core.speculator.stats.num_draft_tokens == 0


def test_random_aborts_of_speculating_requests_leak_no_blocks():
    core = _core(SpeculativeConfig(SpeculativeMethod.NGRAM, 4), num_blocks=40)
    chooser = random.Random(5)
    prompts = _prompts()
    live: list[str] = []
    for index in range(NUM_ABORT_REQUESTS):
        request_id = f"q{index}"
        core.add(new_request(request_id, prompts[index % len(prompts)], greedy(MAX_TOKENS)))
        live.append(request_id)
        for _ in range(chooser.randint(0, 4)):
            for result in core.step():
                if result.finish_reason is not None:
                    live.remove(result.request_id)
        if live and chooser.random() < 0.7:
            core.abort(live.pop(chooser.randrange(len(live))))
    for request_id in live:
        core.abort(request_id)
    assert core.speculator.stats.num_draft_tokens > 0
    assert core.scheduler.kv.pool.num_free_blocks == 40
    assert core.runner.batch.num_rows == 0
    assert not core.scheduler.has_work


def test_requests_whose_drafts_keep_failing_stop_drafting():
    """Layer-1 drafts of the random model almost never match: the tracker pauses them (backoff), so far
    fewer drafts are verified than k per decode step."""
    spec = SpeculativeConfig(SpeculativeMethod.EARLY_EXIT, 4, early_exit_layer=1)
    outputs, core = _run(spec, greedy(MAX_TOKENS))
    stats = core.speculator.stats
    num_decode_steps = sum(len(tokens) for tokens in outputs.values())
    assert stats.acceptance_rate < 0.2
    assert stats.num_draft_tokens < 0.3 * 4 * num_decode_steps
