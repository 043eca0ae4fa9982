"""`alise bench kv-dtype`: what an int8 KV pool costs in quality, on the real default model (CPU).

Runs SmolLM2 (bf16 weights) through the engine's own model runner twice, once over a bf16 KV pool
and once over an int8 pool (--kv-cache-dtype int8: quantized on write, per block and kv head
scales), on real ShareGPT prompts (../shared/data, read at run time), and reports:

    perplexity   teacher-forced over the prompts (chunked prefill: later chunks read earlier ones
                 from the pool), bf16 vs int8, and the relative change
    top-1        share of positions where the two pools predict the same next token
    greedy       greedy continuations of every prompt, batched: share of identical tokens, and the
                 length of the common prefix before the first divergence

Prints and saves JSON (default docs/benchmarks/kv_int8_quality.json). Keep it a few minutes:
1 torch thread, a handful of prompts of a few hundred tokens.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import time
from dataclasses import dataclass

from services.common import arg_types
from services.common.cli_errors import print_error

POOLS = ("bf16", "int8")  # KvCacheDtype values compared


@dataclass(frozen=True)
class KvDtypeBenchConfig:
    """Settings of one run (saved with the results)."""

    model: str  # catalog name or local directory
    num_prompts: int  # ShareGPT prompts kept
    min_prompt_tokens: int  # shorter prompts are skipped
    max_prompt_tokens: int  # prompts are truncated to this
    chunk_tokens: int  # prefill chunk (token budget per step)
    num_output_tokens: int  # greedy tokens per prompt
    num_threads: int  # torch intra-op threads
    seed: int  # ShareGPT sample


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("kv-dtype", help="int8 vs bf16 KV pool on SmolLM2: perplexity, greedy agreement (CPU)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--num-prompts", type=arg_types.positive_int, default=8)
    parser.add_argument("--min-prompt-tokens", type=arg_types.positive_int, default=128)
    parser.add_argument("--max-prompt-tokens", type=arg_types.positive_int, default=384)
    parser.add_argument("--chunk-tokens", type=arg_types.positive_int, default=128)
    parser.add_argument("--num-output-tokens", type=arg_types.positive_int, default=64)
    parser.add_argument("--num-threads", type=arg_types.positive_int, default=1)
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/kv_int8_quality.json"))
    parser.set_defaults(handler=run)


def _prompts(config: KvDtypeBenchConfig, tokenizer) -> list[list[int]]:
    """Token ids of ShareGPT prompts with at least min_prompt_tokens, truncated; FileNotFoundError
    when ../shared/data is absent."""
    from services.bench.workload import SHAREGPT, load_trace

    trace = load_trace(SHAREGPT, num_requests=40 * config.num_prompts, seed=config.seed, max_model_len=8192)
    prompts = []
    for record in trace:
        ids = tokenizer.encode(record.prompt_text)
        if len(ids) >= config.min_prompt_tokens:
            prompts.append(ids[: config.max_prompt_tokens])
        if len(prompts) == config.num_prompts:
            break
    return prompts


def _core(loaded, pool: str, config: KvDtypeBenchConfig, num_blocks: int):
    import torch

    from services.engine.block_pool import KvBlockManager
    from services.engine.engine_core import EngineCore
    from services.engine.kv_cache import kv_torch_dtype
    from services.engine.model_runner import ModelRunner
    from services.engine.scheduler import Scheduler, SchedulerLimits, make_policy

    kv = KvBlockManager(num_blocks, 16)
    limits = SchedulerLimits(config.num_prompts, config.chunk_tokens, loaded.max_context_tokens)
    scheduler = Scheduler(make_policy("fcfs"), limits, kv, loaded.eos_token_id)
    kv_dtype = kv_torch_dtype(pool, torch.bfloat16)
    return EngineCore(scheduler, ModelRunner(loaded.model, kv, num_blocks, enforce_eager=True, kv_dtype=kv_dtype))


def _request(request_id: str, prompt: list[int], max_tokens: int):
    from services.engine.request import Request, SamplingOptions

    options = SamplingOptions(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True)
    return Request(request_id, prompt, options, time.monotonic(), float(max_tokens))


def teacher_forced(core, prompts: list[list[int]]) -> tuple[list[float], list[int]]:
    """Per predicted position (all prompts, in order): the target's negative log-likelihood and the
    argmax token. Steps the scheduler's chunked prefill through the runner, all rows' logits."""
    import torch

    nll: dict[str, list[float]] = {}
    top1: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        core.add(_request(f"p{index}", prompt, 1))
    runner, scheduler = core.runner, core.scheduler
    with torch.inference_mode():
        while scheduler.has_work:
            step = scheduler.schedule()
            input_ids, positions, metadata = runner._prepare(step)
            log_probs = torch.log_softmax(
                runner.model.lm_head(runner._forward(input_ids, positions, metadata)).float(), -1
            )
            sampled, row = {}, 0
            for chunk in step.chunks:
                request, first = chunk.request, chunk.request.num_computed_tokens
                rows = log_probs[row : row + chunk.num_new_tokens]
                targets = request.prompt_token_ids[first + 1 : first + chunk.num_new_tokens + 1]
                picked = rows[torch.arange(len(targets)), torch.tensor(targets, dtype=torch.long)]
                nll.setdefault(request.request_id, []).extend((-picked).tolist())
                top1.setdefault(request.request_id, []).extend(rows[: len(targets)].argmax(-1).tolist())
                if chunk.samples_token:
                    sampled[request.request_id] = int(rows[-1].argmax())
                row += chunk.num_new_tokens
            scheduler.update(step, sampled)
    order = [f"p{i}" for i in range(len(prompts))]
    return [v for r in order for v in nll[r]], [v for r in order for v in top1[r]]


def greedy(core, prompts: list[list[int]], num_tokens: int) -> list[list[int]]:
    """Greedy continuations of every prompt, batched through the engine."""
    outputs: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        core.add(_request(f"g{index}", prompt, num_tokens))
    while core.scheduler.has_work:
        for result in core.step():
            outputs.setdefault(result.request_id, []).extend(result.new_token_ids)
    return [outputs[f"g{i}"] for i in range(len(prompts))]


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def measure(config: KvDtypeBenchConfig) -> dict:
    import torch

    from services.common.tokenizer import load_tokenizer
    from services.engine.model_loader import load_model

    torch.set_num_threads(config.num_threads)
    loaded = load_model(config.model, dtype=torch.bfloat16, device=torch.device("cpu"), seed=0)
    prompts = _prompts(config, load_tokenizer(loaded.tokenizer))
    num_blocks = sum(-(-(len(p) + config.num_output_tokens) // 16) for p in prompts) + 8
    results, started = {}, time.perf_counter()
    for pool in POOLS:
        nll, top1 = teacher_forced(_core(loaded, pool, config, num_blocks), prompts)
        outputs = greedy(_core(loaded, pool, config, num_blocks), prompts, config.num_output_tokens)
        results[pool] = {"nll": nll, "top1": top1, "greedy": outputs}
    base, int8 = results["bf16"], results["int8"]
    ppl = {pool: math.exp(sum(results[pool]["nll"]) / len(results[pool]["nll"])) for pool in POOLS}
    prefixes = [_common_prefix(a, b) for a, b in zip(base["greedy"], int8["greedy"])]
    same = sum(x == y for a, b in zip(base["greedy"], int8["greedy"]) for x, y in zip(a, b))
    return {
        "num_prompts": len(prompts),
        "prompt_tokens": [len(p) for p in prompts],
        "num_scored_positions": len(base["nll"]),
        "perplexity_bf16": ppl["bf16"],
        "perplexity_int8": ppl["int8"],
        "perplexity_change": ppl["int8"] / ppl["bf16"] - 1,
        "top1_agreement": sum(x == y for x, y in zip(base["top1"], int8["top1"])) / len(base["top1"]),
        "greedy_token_agreement": same / (len(prompts) * config.num_output_tokens),
        "greedy_common_prefix_tokens": prefixes,
        "greedy_identical_prompts": sum(p == config.num_output_tokens for p in prefixes),
        "seconds": time.perf_counter() - started,
    }


def run(args: argparse.Namespace) -> int:
    from services.bench.results import build_report, write_report

    config = KvDtypeBenchConfig(
        args.model,
        args.num_prompts,
        args.min_prompt_tokens,
        args.max_prompt_tokens,
        args.chunk_tokens,
        args.num_output_tokens,
        args.num_threads,
        args.seed,
    )
    try:
        figures = measure(config)
    except FileNotFoundError as error:
        print_error("alise bench kv-dtype", f"needs ../shared/data and the installed model: {error}")
        return 1
    print(
        f"prompts: {figures['num_prompts']} ({sum(figures['prompt_tokens'])} tokens, "
        f"{figures['num_scored_positions']} scored positions)"
    )
    print(
        f"perplexity: bf16 {figures['perplexity_bf16']:.4f}  int8 {figures['perplexity_int8']:.4f}  "
        f"change {100 * figures['perplexity_change']:+.2f}%"
    )
    print(f"teacher-forced top-1 agreement {100 * figures['top1_agreement']:.2f}%")
    print(
        f"greedy ({config.num_output_tokens} tokens/prompt): token agreement "
        f"{100 * figures['greedy_token_agreement']:.1f}%, identical continuations "
        f"{figures['greedy_identical_prompts']}/{figures['num_prompts']}, common prefixes "
        f"{figures['greedy_common_prefix_tokens']}"
    )
    path = write_report(args.out, build_report("kv-dtype", config, figures))
    print(f"saved {path} ({figures['seconds']:.0f} s)")
    return 0
