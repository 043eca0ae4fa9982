"""Continuous batching over the paged cache gives Hugging Face generate()'s greedy tokens exactly.

Prompts of mixed lengths arrive at different steps, long prompts are chunked by a small token
budget, and a small KV pool forces recompute preemptions: none of it may change a single token.
"""

import functools

import torch

from services.engine.request import Request, SamplingOptions
from tests.engine_model import default_model, greedy, make_core, new_request, run_to_completion

PROMPT_LENGTHS = (5, 37, 12, 70, 1, 23)
ARRIVAL_STEPS = (0, 0, 3, 6, 7, 15)
MAX_TOKENS = 24


def _prompts(seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 32000, (n,), generator=generator).tolist() for n in PROMPT_LENGTHS]


@functools.lru_cache(maxsize=None)
def _hf_greedy(prompt: tuple[int, ...]) -> list[int]:
    """Hugging Face generate() on the prompt alone (batch of one: no padding)."""
    model = default_model().model
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS, do_sample=False
        )
    return out[0, len(prompt) :].tolist()


def _engine_greedy(prompts, *, num_blocks: int, token_budget: int):
    core = make_core(num_blocks=num_blocks, block_size=8, token_budget=token_budget)
    arrivals: dict[int, list[Request]] = {}
    for index, (prompt, step) in enumerate(zip(prompts, ARRIVAL_STEPS)):
        arrivals.setdefault(step, []).append(new_request(f"r{index}", prompt, greedy(MAX_TOKENS)))
    outputs = run_to_completion(core, arrivals)
    assert core.scheduler.kv.pool.num_free_blocks == num_blocks
    return outputs, core


def test_batched_paged_greedy_equals_hf_generate_token_for_token():
    prompts = _prompts()
    outputs, _ = _engine_greedy(prompts, num_blocks=256, token_budget=32)
    for index, prompt in enumerate(prompts):
        assert outputs[f"r{index}"] == _hf_greedy(tuple(prompt)), f"prompt {index} ({len(prompt)} tokens) diverged"


def test_recompute_preemption_does_not_change_greedy_output():
    prompts = _prompts()
    # 20 blocks x 8 tokens = 160 positions for ~270 needed at peak: preemptions must happen.
    outputs, core = _engine_greedy(prompts, num_blocks=20, token_budget=32)
    for index, prompt in enumerate(prompts):
        assert outputs[f"r{index}"] == _hf_greedy(tuple(prompt)), f"prompt {index} diverged after preemption"
    assert core.scheduler.num_preemptions > 0


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch():
    prompt = _prompts(seed=2)[0]
    sampled = SamplingOptions(max_tokens=16, temperature=0.8, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    alone = run_to_completion(
        make_core(num_blocks=64, block_size=8, token_budget=64), {0: [new_request("x", prompt, sampled)]}
    )["x"]
    crowd = {0: [new_request("x", prompt, sampled)] + [new_request(f"o{i}", [5 + i] * 9, greedy(16)) for i in range(3)]}
    batched = run_to_completion(make_core(num_blocks=64, block_size=8, token_budget=64), crowd)["x"]
    assert alone == batched and len(alone) == 16
