"""Where a speculative step's time goes in the engine: per phase, n-gram vs off, the two engines stepped alternately.

`python -m services.bench.spec_step_profile --set summarise-rewrite --batch-size 16 --out ...`

The group of `alise bench spec` (spec_run.py: b prompts admitted together, stepped to the end) runs in an off
engine and an n-gram engine over one loaded model, one step of each in turn (so machine drift hits both
alike). Each engine's phases are wrapped on the instance, timed on thread CPU time (1 torch thread: every
operator runs in this thread):

    plan        Speculator.plan (the meter's settle, n-gram lookup, the turn-down); 0 with speculation off
    schedule    Scheduler.schedule (draft slots granted, KV blocks for the drafts)
    prepare     the runner's input arrays and the attention plan
    forward     the layers (attention included), without the LM head
    lm_head     the LM head over the sampled rows (a verify: its k + 1 rows)
    sample      sampling and verification (accepted drafts appended to the rows)
    update      Scheduler.update (tokens appended, finished requests, rejected drafts' KV rolled back)
    observe     Speculator.observe (acceptance tracking)
    other       the rest of EngineCore.step

Per engine and window (prefill: some prompt of the group still prefilling; decode: every prompt prefilled, the
window `alise bench spec` times), ms per step of each phase, steps, output tokens emitted and running requests
per step. Saves JSON; asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import time
from collections import defaultdict

from services.bench.results import build_report, write_report
from services.bench.spec_bench import SpecBenchConfig, build_engines
from services.bench.spec_prompts import PromptSetName, read_sharegpt, select_prompt_sets
from services.bench.spec_run import greedy_options, spec_counters
from services.engine.config import Dtype
from services.engine.engine_core import EngineCore
from services.engine.request import Request
from services.engine.spec.ngram_drafter import NgramConfig

PHASES = ("plan", "schedule", "prepare", "forward", "lm_head", "sample", "update", "observe")


class PhaseClock:
    """Thread CPU seconds per phase of the current step (outermost wrapped call only: nested phases are not
    counted twice)."""

    def __init__(self) -> None:
        self.step: dict[str, float] = defaultdict(float)
        self._depth = 0

    def wrap(self, owner: object, name: str, phase: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            if self._depth:
                return inner(*args, **kwargs)
            self._depth += 1
            started_s = time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.step[phase] += time.thread_time() - started_s
                self._depth -= 1

        setattr(owner, name, timed)


def instrument(core: EngineCore) -> PhaseClock:
    clock = PhaseClock()
    runner = core.runner
    if core.speculator is not None:
        clock.wrap(core.speculator, "plan", "plan")
        clock.wrap(core.speculator, "observe", "observe")
    clock.wrap(core.scheduler, "schedule", "schedule")
    clock.wrap(core.scheduler, "update", "update")
    clock.wrap(runner, "prepare_arrays", "prepare")
    clock.wrap(runner, "metadata_of", "prepare")
    clock.wrap(runner.decoder, "forward", "forward")
    clock.wrap(runner.decoder, "lm_head", "lm_head")
    clock.wrap(runner.model.lm_head, "forward", "lm_head")  # the verify path's LM head (an nn.Linear)
    clock.wrap(runner, "_sample_rows", "sample")
    clock.wrap(runner, "_verify", "sample")
    return clock


class _Run:
    """One engine's group, stepped one step at a time, with per-window phase sums."""

    def __init__(self, core: EngineCore, prompts, max_tokens: int, tag: str) -> None:
        self.core, self.clock = core, instrument(core)
        self.requests = [
            Request(f"{tag}-{i}", list(p.token_ids), greedy_options(max_tokens), time.monotonic(), float(max_tokens))
            for i, p in enumerate(prompts)
        ]
        for request in self.requests:
            core.add(request)
        self.windows = {w: {"steps": 0, "tokens": 0, "running": 0, "drafts": 0, "step": 0.0, **dict.fromkeys(PHASES, 0.0)}
                        for w in ("prefill", "decode")}  # fmt: skip

    def step(self) -> None:
        if not self.core.scheduler.has_work:
            return
        done = all(r.num_computed_tokens >= len(r.prompt_token_ids) for r in self.requests)
        window = self.windows["decode" if done else "prefill"]
        running = len(self.core.scheduler.running)
        self.clock.step.clear()
        drafted = spec_counters(self.core).num_draft_tokens
        started_s = time.thread_time()
        results = self.core.step()
        window["drafts"] += spec_counters(self.core).num_draft_tokens - drafted
        window["step"] += time.thread_time() - started_s
        window["steps"] += 1
        window["running"] += running
        window["tokens"] += sum(len(result.new_token_ids) for result in results)
        for phase, seconds in self.clock.step.items():
            window[phase] += seconds

    def figures(self) -> dict:
        out = {}
        for name, window in self.windows.items():
            steps = max(window["steps"], 1)
            row = {"steps": window["steps"], "tokens": window["tokens"], "running_per_step": window["running"] / steps,
                   "drafts_per_step": window["drafts"] / steps}  # fmt: skip
            row["step_ms"] = 1e3 * window["step"] / steps
            row.update({f"{phase}_ms": 1e3 * window[phase] / steps for phase in PHASES})
            row["other_ms"] = row["step_ms"] - sum(row[f"{phase}_ms"] for phase in PHASES)
            row["tokens_per_cpu_s"] = window["tokens"] / window["step"] if window["step"] else 0.0
            out[name] = row
        return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=PromptSetName, default=PromptSetName("summarise-rewrite"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    config = SpecBenchConfig("smollm2-135m-instruct", Dtype.AUTO, ("off", "ngram"), (args.batch_size,), 1,
                             args.max_tokens, 1, 0, NgramConfig(), 0, 1024, 0, None)  # fmt: skip
    load_before = os.getloadavg()
    loaded, engines, _ = build_engines(config)
    from services.common.tokenizer import load_tokenizer

    pools = select_prompt_sets(read_sharegpt(None), load_tokenizer(loaded.tokenizer), num_prompts=args.batch_size,
                               seed=0, max_prompt_tokens=1024)  # fmt: skip
    prompts = pools[args.set][: args.batch_size]
    for core in engines.values():  # warm-up, as the bench's
        warm = _Run(core, prompts, 8, "warm")
        while core.scheduler.has_work:
            warm.step()
    results = []
    for repeat in range(args.repeats):
        runs = {str(method): _Run(core, prompts, args.max_tokens, f"r{repeat}") for method, core in engines.items()}
        while any(run.core.scheduler.has_work for run in runs.values()):
            for run in runs.values():
                run.step()
        results.append({method: run.figures() for method, run in runs.items()})
        for method, figures in results[-1].items():
            for window, row in figures.items():
                phases = " ".join(f"{p} {row[f'{p}_ms']:.1f}" for p in (*PHASES, "other"))
                print(f"r{repeat} {method:5s} {window:7s} steps {row['steps']:3d} tokens {row['tokens']:4d} "
                      f"running {row['running_per_step']:4.1f} drafts {row['drafts_per_step']:4.1f} step {row['step_ms']:6.1f} ms: {phases}")  # fmt: skip
    figures = {"load_average_before": load_before, "load_average_after": os.getloadavg(), "repeats": results}
    if args.out is not None:
        report_config = {**vars(args), "set": str(args.set), "out": str(args.out), "clock": "thread_time"}
        print("wrote", write_report(args.out, build_report("spec_step_profile", report_config, figures)))


if __name__ == "__main__":
    main()
