"""`python -m services.bench.spec_bound`: how fast could prompt lookup make greedy decoding, at best?

Bound before building. On the real default model, off's greedy outputs on the three prompt sets of
`alise bench spec` (same selection, spec_prompts.py) are generated once; the verify costs are
measured in the same run; then every drafter is replayed on those outputs (spec_bound_sim.py):

    1. generate      off, batch 1, greedy, each prompt of each set       -> prompt + output tokens
    2. measure       decode step vs a (k + 1)-token verify, k = 1..16, on the engine's own decoder
                     (exit_head_costs._OneRequest), and off's engine step (host work included)
    3. replay        oracle (best earlier occurrence, any n >= 1, k up to 16, optimal draft lengths)
                     and the real drafters (n-gram variants, ngram_drafter.py) -> speedup bounds
                     and the engine's batch-1 rules around them (k, pauses: spec_bound_engine.py)
    4. losses        where the default and the previous default lose against the oracle, per step
                     and in speedup (spec_bound_loss.py)

Two cost scales: "model" = the decoder's own ratio verify(k) / decode; "engine" = (host + verify(k))
/ (host + decode) with host = off's measured engine step minus the decoder's decode, i.e. assuming a
verify adds no host work over a decode (optimistic, so right for an upper bound). All times are
thread CPU time (time.thread_time, 1 torch thread), robust to other jobs on a shared machine. Saves JSON (figures
and prompt ids only: the prompts are research data read at run time) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

from services.bench.results import build_report, write_report
from services.bench.spec_bench import SpecBenchConfig, build_engines
from services.bench.spec_bound_engine import coefficients_from_costs, engine_drafters
from services.bench.spec_bound_loss import loss_report
from services.bench.spec_bound_sim import CURRENT, LABEL_CURRENT, LABEL_PREVIOUS, PREVIOUS, CostScale, replay_all
from services.bench.spec_prompts import read_sharegpt, select_prompt_sets
from services.bench.spec_run import run_group
from services.engine.config import Dtype
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.ngram_drafter import NgramConfig

MAX_VERIFY_DRAFTS = 16  # MAX_NUM_SPECULATIVE_TOKENS: the costs measured cover every k the engine allows


def generate(config: SpecBenchConfig) -> tuple[dict, object]:
    """Off's greedy outputs, batch 1: {set: [(prompt id, prompt tokens, output tokens, decode s)]}."""
    from services.common.tokenizer import load_tokenizer

    loaded, engines, _ = build_engines(config)
    core = engines[SpeculativeMethod.OFF]
    tokenizer = load_tokenizer(loaded.tokenizer)
    prompt_sets = select_prompt_sets(
        read_sharegpt(config.data_dir), tokenizer, num_prompts=config.num_prompts, seed=config.seed,
        max_prompt_tokens=config.max_prompt_tokens,
    )  # fmt: skip
    run_group(core, next(iter(prompt_sets.values()))[:1], 8, "warmup")
    generated = {}
    for name, prompts in prompt_sets.items():
        rows = []
        for prompt in prompts:
            run = run_group(core, [prompt], config.max_tokens, f"bound-{name.value}")
            output = run.outputs[prompt.prompt_id]
            rows.append(
                (prompt.prompt_id, list(prompt.token_ids), list(output), run.decode_cpu_s, run.num_decode_steps)
            )
            print(f"  {name.value} {prompt.prompt_id}: {len(output)} tokens", flush=True)
        generated[name.value] = rows
    return generated, loaded.model


def _cpu_ms(action) -> float:
    started = time.thread_time()
    action()
    return (time.thread_time() - started) * 1e3


def measure_costs(model, context_len: int, num_repeats: int) -> dict:
    """Median thread-CPU ms of a decode step and of (k + 1)-token verifies, interleaved per repeat (1 torch
    thread: every operator runs in this thread, so CPU time leaves out what other jobs took)."""
    import torch

    from services.engine.spec.exit_head_costs import _OneRequest

    with torch.inference_mode():
        request = _OneRequest(model, context_len, MAX_VERIFY_DRAFTS + 1)
        samples: dict[int, list[float]] = {k: [] for k in range(MAX_VERIFY_DRAFTS + 1)}
        for repeat in range(3 + num_repeats):
            for k in samples:
                elapsed_ms = _cpu_ms(lambda n=k + 1: request.full_step(n))
                if repeat >= 3:
                    samples[k].append(elapsed_ms)
    return {k: statistics.median(values) for k, values in samples.items()}


def cost_scales(generated: dict, verify_ms: dict) -> dict[str, CostScale]:
    decode_s = sum(row[3] for rows in generated.values() for row in rows)
    decode_steps = sum(row[4] for rows in generated.values() for row in rows)
    engine_step_ms = 1e3 * decode_s / max(decode_steps, 1)
    host_ms = max(engine_step_ms - verify_ms[0], 0.0)
    return (
        {
            "model": CostScale.of([verify_ms[k] / verify_ms[0] for k in sorted(verify_ms)]),
            "engine": CostScale.of([(host_ms + verify_ms[k]) / (host_ms + verify_ms[0]) for k in sorted(verify_ms)]),
        },
        engine_step_ms,
        host_ms,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.spec_bound", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--num-prompts", type=int, default=8, help="per set")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--num-cost-repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", type=pathlib.Path, default=None,
                        help="cache of step 1-2 (prompt tokens: keep it out of the repo); reused when present")  # fmt: skip
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/spec/spec_bound.json"))
    args = parser.parse_args(argv)
    config = SpecBenchConfig(
        args.model, Dtype.AUTO, (SpeculativeMethod.OFF,), (1,), args.num_prompts, args.max_tokens, 1, 4,
        NgramConfig(), 0, 1024, args.seed, None,
    )  # fmt: skip
    loads_before = os.getloadavg()
    if args.raw is not None and args.raw.exists():
        raw = json.loads(args.raw.read_text())
    else:
        started = time.perf_counter()
        generated, model = generate(config)
        prompt_lens = [len(row[1]) for rows in generated.values() for row in rows]
        context_len = int(statistics.median(prompt_lens)) + args.max_tokens // 2
        verify_ms = measure_costs(model, context_len, args.num_cost_repeats)
        raw = {"generated": generated, "verify_ms": {str(k): v for k, v in verify_ms.items()},
               "context_len": context_len, "generate_and_measure_s": time.perf_counter() - started}  # fmt: skip
        if args.raw is not None:
            args.raw.write_text(json.dumps(raw))
    verify_ms = {int(k): v for k, v in raw["verify_ms"].items()}
    scales, engine_step_ms, host_ms = cost_scales(raw["generated"], verify_ms)
    coefficients = coefficients_from_costs(verify_ms[0], {k: verify_ms[k] for k in verify_ms if k})
    figures = replay_all(raw["generated"], scales, stateful=engine_drafters(coefficients))
    loss_drafters = {LABEL_CURRENT: (CURRENT, 16), LABEL_PREVIOUS: (PREVIOUS, 4)}
    figures["losses"] = {
        f"{name} ({selection})": loss_report(rows[:size], loss_drafters, scales["engine"])
        for name, rows in raw["generated"].items()
        for selection, size in (("first 4 prompts", 4), (f"all {len(rows)}", len(rows)))
    }
    figures["costs"] = {
        "context_len": raw["context_len"], "decoder_ms_by_num_drafts": verify_ms, "engine_decode_step_ms": engine_step_ms,
        "host_ms": host_ms, "ratio_model": scales["model"].ratios, "ratio_engine": scales["engine"].ratios,
    }  # fmt: skip
    figures["run"] = {"load_average_1_5_15_before": loads_before, "load_average_1_5_15_after": os.getloadavg(),
                      "prompt_ids": {name: [row[0] for row in rows] for name, rows in raw["generated"].items()}}  # fmt: skip
    path = write_report(args.out, build_report("spec_bound", config, figures))
    print_summary(figures)
    print(f"saved {path}")
    return 0


def print_summary(figures: dict) -> None:
    for name, drafters in figures["sets"].items():
        print(name)
        for drafter, row in drafters.items():
            print(
                f"  {drafter:<28} speedup model {row['speedup']['model']:.2f}x engine {row['speedup']['engine']:.2f}x"
                f"  tokens/verify {row['tokens_per_verify']:.2f}  drafts/step {row['drafts_per_step']:.2f}"
                f"  acceptance {row['acceptance_rate']:.2f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
