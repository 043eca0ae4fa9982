"""`alise bench spec`: decode tokens/s, TPOT and acceptance with speculative decoding off / ngram / early-exit.

The real default model (SmolLM2-135M-Instruct) runs in this process through `app.build_engine`,
one engine per method sharing the loaded weights, 1 torch thread (`--cpu-threads 1`), greedy. The
three prompt sets come from ShareGPT by the rules of spec_prompts.py. For each set and batch size b,
the set's prompts are cut into groups of b (spec_run.py: the b requests admitted together, stepped
to completion; what is timed is said there). Side by side, in one run:

    for each repeat r:
      for each set, batch size b, group g:
        every method runs group g at once, one step of each in turn, in an order rotated by r + g
                                                                     (methods interleaved step by step,
                                                                      so machine drift hits all alike)

    tokens/s of (set, b, method, r) = decode tokens of its groups / their decode wall time
    speedup of (set, b, method, r)  = that / tokens/s of (set, b, off, r)          -> median, min, max over r

A method may carry its own k ("ngram:16", spec_report.BenchMethod), so variants of one drafter run
side by side with the plain one. Greedy outputs of every method are compared with off's for the same
group and repeat, token for token (the exactness claim); mismatches are counted, not hidden. Saves
JSON and a PNG (spec_report.py); asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from services.bench.results import build_report, write_report
from services.bench.spec_prompts import PromptSetName, SpecPrompt, read_sharegpt, select_prompt_sets
from services.bench.spec_report import BenchMethod, BenchPreset, GroupRecord, plot_speedups, print_table, summarise
from services.bench.spec_run import run_group, run_groups
from services.common import arg_types
from services.common.cli_errors import print_error
from services.common.model_catalog import DEFAULT_MODEL
from services.engine.config import Dtype
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.ngram_drafter import NgramConfig
from services.engine.spec.spec_config import DEFAULT_NUM_SPECULATIVE_TOKENS

if TYPE_CHECKING:
    from services.engine.spec.speculator import Speculator

WARMUP_MAX_TOKENS = 8  # each engine's warm-up group: first calls, and a few steps for the step-cost model


@dataclass(frozen=True)
class SpecBenchConfig:
    model: str  # catalog name or directory (`--model` of the engine)
    dtype: Dtype  # weights' dtype (`--dtype`; auto = bf16 on CPUs with native bf16)
    methods: tuple[BenchMethod, ...]  # off first: every speedup is over it; "ngram:16" = ngram with k 16
    batch_sizes: tuple[int, ...]  # requests admitted together
    num_prompts: int  # prompts per set each batch size covers (a batch larger than this takes b prompts)
    max_tokens: int  # output tokens per request at most (greedy, stops at EOS)
    num_repeats: int  # repetitions of the whole interleaved sweep (median and spread over these)
    num_speculative_tokens: int  # k; 0 = each method's own (spec_config.METHOD_NUM_SPECULATIVE_TOKENS)
    ngram: NgramConfig  # suffix lengths prompt lookup tries
    early_exit_layer: int  # 0 = the trained heads' best layer
    max_prompt_tokens: int  # chat-templated prompt tokens at most
    seed: int  # prompt selection
    data_dir: pathlib.Path | None  # ../shared/data when None ($ALISE_SHARED_DATA overrides)
    # the engines' per-step token budget; 0 = the engine's default (512: a batch-16 group prefills over ~10
    # steps, decoding the prompts prefilled first meanwhile); one large enough for every prompt of a group
    # starts all its requests decoding at the same step
    max_num_batched_tokens: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(BenchMethod(method) for method in self.methods))
        if not self.methods or self.methods[0] != SpeculativeMethod.OFF:
            raise ValueError("methods must start with off (the baseline of every speedup)")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods repeat: {[m.value for m in self.methods]}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes must be >= 1, got {self.batch_sizes}")
        for name in ("num_prompts", "max_tokens", "num_repeats", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_num_batched_tokens < 0:
            raise ValueError(f"max_num_batched_tokens must be >= 0, got {self.max_num_batched_tokens}")

    @property
    def pool_size(self) -> int:
        """Prompts selected per set: enough for num_prompts and for the largest batch."""
        return max(self.num_prompts, max(self.batch_sizes))


def groups_of(pool: list[SpecPrompt], batch_size: int, num_prompts: int) -> list[list[SpecPrompt]]:
    """ceil(num_prompts / b) consecutive groups of b prompts, wrapping around the pool if needed."""
    num_groups = math.ceil(num_prompts / batch_size)
    return [[pool[(g * batch_size + i) % len(pool)] for i in range(batch_size)] for g in range(num_groups)]


def build_engines(config: SpecBenchConfig):
    """One engine per method over one loaded model, as `alise engine --cpu-threads 1` builds it."""
    from services.engine.app import build_engine, resolve_device_and_dtype
    from services.engine.config import EngineConfig
    from services.engine.model_loader import load_model

    engine_configs = {
        method: EngineConfig(
            model=config.model,
            dtype=config.dtype,
            cpu_threads=1,
            max_num_seqs=max(config.batch_sizes),
            speculative=method.method,
            num_speculative_tokens=method.num_speculative_tokens or config.num_speculative_tokens,
            ngram_min=config.ngram.min_n,
            ngram_max=config.ngram.max_n,
            early_exit_layer=config.early_exit_layer,
            **({"max_num_batched_tokens": config.max_num_batched_tokens} if config.max_num_batched_tokens else {}),
        )
        for method in config.methods
    }
    first = engine_configs[config.methods[0]]
    device, dtype = resolve_device_and_dtype(first)  # sets torch to 1 thread
    loaded = load_model(first.model, dtype=dtype, device=device, seed=first.seed)
    engines = {method: build_engine(engine_config, loaded)[0] for method, engine_config in engine_configs.items()}
    for method, core in engines.items():
        if method.preset is BenchPreset.PREV:
            core.speculator = previous_ngram_speculator(core.speculator)
        elif method.preset is BenchPreset.FIT:
            core.speculator = fitted_turn_down_speculator(core.speculator)
        elif method.preset is BenchPreset.SHARE:
            core.speculator = share_valued_speculator(core.speculator)
        elif method.preset is BenchPreset.BATCH:
            core.speculator = batch_valued_speculator(core.speculator)
        elif method.preset is BenchPreset.LOW_PAUSE:
            core.speculator = low_pause_speculator(core.speculator)
    return loaded, engines, str(dtype).removeprefix("torch.")


def previous_ngram_speculator(speculator: "Speculator") -> "Speculator":
    """The same engine's speculator with the n-gram rules before the second pass of 2026-12-07 (the
    "@prev" preset): drafts stop where the matched continuation reaches the end, nothing is drafted
    without a match of min_n tokens, and the batch's k comes from one pooled acceptance rate."""
    from services.engine.spec.adaptive_drafting import AdaptiveDraftingConfig
    from services.engine.spec.speculator import Speculator

    config = speculator.config
    ngram = replace(config.ngram, copy_past_end=False, num_unigram_drafts=0)
    adaptive = AdaptiveDraftingConfig(two_rate_model=False)
    return Speculator(
        replace(config, ngram=ngram), speculator.cost_model, speculator.max_model_len, adaptive, speculator.meter.config
    )


def fitted_turn_down_speculator(speculator: "Speculator") -> "Speculator":
    """The same engine's speculator with the batch-level turn-down before the measured draft costs (the
    "@fit" preset): one k for the batch from batch_num_drafts on the step-cost fit, no probe."""
    from services.engine.spec.speculator import Speculator

    costs = replace(speculator.meter.config, measured=False)
    return Speculator(speculator.config, speculator.cost_model, speculator.max_model_len, draft_costs=costs)


def share_valued_speculator(speculator: "Speculator") -> "Speculator":
    """The same engine's speculator valuing an accepted token at a decode's full share of a step (the
    "@share" preset)."""
    from services.engine.spec.speculator import Speculator

    costs = replace(speculator.meter.config, closed_batch_value=False)
    return Speculator(speculator.config, speculator.cost_model, speculator.max_model_len, draft_costs=costs)


def batch_valued_speculator(speculator: "Speculator") -> "Speculator":
    """The same engine's speculator valuing every decode's accepted token alike, not by the batch's critical
    path (the "@batch" preset: the rule before 2026-12-07's session 12)."""
    from services.engine.spec.speculator import Speculator

    costs = replace(speculator.meter.config, critical_path=False)
    return Speculator(speculator.config, speculator.cost_model, speculator.max_model_len, draft_costs=costs)


LOW_PAUSE_ACCEPTANCE = 0.1  # the "@lowpause" preset's per-request pause threshold (the engine's: 0.2)


def low_pause_speculator(speculator: "Speculator") -> "Speculator":
    """The same engine's speculator whose requests pause drafting only below an estimated acceptance of
    LOW_PAUSE_ACCEPTANCE (the "@lowpause" preset)."""
    from services.engine.spec.adaptive_drafting import AdaptiveDraftingConfig
    from services.engine.spec.speculator import Speculator

    adaptive = replace(AdaptiveDraftingConfig(), min_acceptance_rate=LOW_PAUSE_ACCEPTANCE)
    config = speculator.config
    return Speculator(config, speculator.cost_model, speculator.max_model_len, adaptive, speculator.meter.config)


def engine_facts(engines) -> dict:
    """What each engine drafts with (the early-exit layer actually chosen, and whether its head is trained)."""
    facts = {}
    for method, core in engines.items():
        drafter = getattr(core.runner, "early_exit", None)
        head = getattr(drafter, "head", None)
        facts[method.value] = {
            "early_exit_layer": None if head is None else head.num_layers,
            "early_exit_head_trained": None if head is None else getattr(head, "down", None) is not None,
            "num_kv_blocks": core.runner.cache_shape.num_blocks,
        }
    return facts


def draft_costs(engines) -> dict:
    """Each drafting engine's measured draft costs (spec/draft_cost.py) as they stand, ms, by the smallest
    batch size of each fitted batch-size class."""
    costs = {}
    for method, core in engines.items():
        meter = getattr(core.speculator, "meter", None)
        if meter is None:
            continue
        costs[method.value] = {
            str(batch): {name.removesuffix("_s") + "_ms": 1e3 * value for name, value in asdict(fitted).items()}
            for batch, fitted in meter.fitted.items()
        }
    return costs


def run_sweep(
    config: SpecBenchConfig,
    prompt_sets: dict[PromptSetName, list[SpecPrompt]],
    engines,
    on_progress: Callable[[list[GroupRecord]], None] | None = None,
) -> list[GroupRecord]:
    """Every (repeat, set, batch, group, method), methods interleaved per group; on_progress gets the
    records so far after each (repeat, set, batch) cell (the report is saved there, so a run cut short
    keeps every cell it finished; a cell's figures cover the repeats it has)."""
    warmup = next(iter(prompt_sets.values()))
    for core in engines.values():
        run_group(core, warmup[: max(config.batch_sizes)], WARMUP_MAX_TOKENS, "warmup")
        run_group(core, warmup[:1], WARMUP_MAX_TOKENS, "warmup1")
    records = []
    for repeat in range(config.num_repeats):
        for prompt_set, pool in prompt_sets.items():
            for batch_size in config.batch_sizes:
                for group_index, group in enumerate(groups_of(pool, batch_size, config.num_prompts)):
                    shift = (repeat + group_index) % len(config.methods)
                    order = config.methods[shift:] + config.methods[:shift]
                    tag = f"r{repeat}-{prompt_set.value}-b{batch_size}-g{group_index}"
                    runs = run_groups({method: engines[method] for method in order}, group, config.max_tokens, tag)
                    for method in order:
                        records.append(GroupRecord(repeat, prompt_set, batch_size, group_index, method, runs[method]))
                    print(f"  repeat {repeat} {prompt_set.value} b={batch_size} group {group_index} done", flush=True)
                if on_progress is not None:
                    on_progress(records)
    return records


def run_benchmark(config: SpecBenchConfig, save: Callable[[dict], None] | None = None) -> dict:
    """The figures of the whole sweep; save (if given) gets the figures of the repeats done after each."""
    loads_before = os.getloadavg()
    loaded, engines, dtype = build_engines(config)
    from services.common.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(loaded.tokenizer)
    prompt_sets = select_prompt_sets(
        read_sharegpt(config.data_dir),
        tokenizer,
        num_prompts=config.pool_size,
        seed=config.seed,
        max_prompt_tokens=config.max_prompt_tokens,
    )
    import torch

    def figures_of(records: list[GroupRecord]) -> dict:
        figures = summarise(records, config.methods)
        figures["run"] = {**facts, "load_average_1_5_15_after": os.getloadavg(), "draft_costs": draft_costs(engines),
                          "num_repeats_started": 1 + max(r.repeat for r in records)}  # fmt: skip
        return figures

    facts = {
        "load_average_1_5_15_before": loads_before,
        "nice": os.nice(0),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "dtype": dtype,
        "chat_template_applied": tokenizer.chat_template is not None,
        "engines": engine_facts(engines),
        "prompt_sets": {
            name.value: {"prompt_ids": [p.prompt_id for p in pool], "prompt_tokens": [len(p.token_ids) for p in pool]}
            for name, pool in prompt_sets.items()
        },
    }
    on_progress = None if save is None else (lambda records: save(figures_of(records)))
    return figures_of(run_sweep(config, prompt_sets, engines, on_progress))


def _csv(kind):
    return lambda text: arg_types.comma_list(text, kind)


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("spec", help="speculative decoding off/ngram/early-exit: tokens/s, TPOT, acceptance")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dtype", type=Dtype, choices=list(Dtype), default=Dtype.AUTO, help="as the engine's --dtype")
    parser.add_argument("--methods", type=_csv(BenchMethod), default=tuple(BenchMethod(m) for m in SpeculativeMethod),
                        help="comma-separated, off first (default: off,ngram,early-exit); METHOD:K = that method with "
                             "its own k, METHOD:K@prev = n-gram with the previous rules, ngram@fit = the turn-down on the step-cost fit, ngram@batch = every decode's token valued alike (no critical path), ngram@lowpause = requests pause below 0.1 acceptance, not 0.2, e.g. off,ngram,ngram:4@prev")  # fmt: skip
    parser.add_argument("--batch-sizes", type=_csv(int), default=(1, 4, 16), help="comma-separated")
    parser.add_argument("--num-prompts", type=arg_types.positive_int, default=8, help="prompts per set and batch size")
    parser.add_argument("--max-tokens", type=arg_types.positive_int, default=128)
    parser.add_argument("--repeats", type=arg_types.positive_int, default=3)
    parser.add_argument(
        "--num-speculative-tokens",
        type=arg_types.non_negative_int,
        default=DEFAULT_NUM_SPECULATIVE_TOKENS,
        help="k (0 = each method's own: n-gram 16, early-exit 4)",
    )
    parser.add_argument("--ngram-min", type=arg_types.positive_int, default=NgramConfig().min_n)
    parser.add_argument("--ngram-max", type=arg_types.positive_int, default=NgramConfig().max_n)
    parser.add_argument("--early-exit-layer", type=arg_types.non_negative_int, default=0, help="0 = best measured")
    parser.add_argument("--max-prompt-tokens", type=arg_types.positive_int, default=1024)
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    parser.add_argument("--data-dir", type=pathlib.Path, default=None, help="default: ../shared/data")
    parser.add_argument("--max-num-batched-tokens", type=arg_types.non_negative_int, default=0,
                        help="the engines' per-step token budget (0 = the engine's default)")  # fmt: skip
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/spec/spec_bench.json"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = SpecBenchConfig(
            args.model, args.dtype, args.methods, args.batch_sizes, args.num_prompts, args.max_tokens, args.repeats,
            args.num_speculative_tokens, NgramConfig(args.ngram_min, args.ngram_max), args.early_exit_layer,
            args.max_prompt_tokens, args.seed, args.data_dir, args.max_num_batched_tokens,
        )  # fmt: skip
    except ValueError as error:
        print_error("alise bench spec", str(error))
        return 2
    report = run_benchmark(config, lambda figures: write_report(args.out, build_report("spec", config, figures)))
    print_table(report)
    path = write_report(args.out, build_report("spec", config, report))
    plot = plot_speedups(report, path.with_suffix(".png"))
    print(f"saved {path} and {plot}")
    return 0
