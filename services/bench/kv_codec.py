"""`alise bench kv-codec`: speed, size and error of the swap codecs (full, int8, int4), on CPU.

Two sources of KV:
  * the default model's KV after a real prefill of ShareGPT prompts (fixed text when
    ../shared/data is absent), float32 as the CPU engine stores it;
  * Gaussian KV of a Llama-3-8B-shaped cache (32 layers, 8 KV heads of 128, block 16) in bfloat16,
    the geometry and dtype a GPU engine swaps (2 MiB per block).
Per codec: encode and decode throughput (source KV GB/s), encoded size vs full, relative error;
int4's error at several group sizes; then the end-to-end figure: the share of identical greedy
tokens after a swap round trip vs none on the default model (swap_agreement.py).
"""

from __future__ import annotations

import argparse
import pathlib
from dataclasses import dataclass

from services.common import arg_types
from services.common.cli_errors import print_error

FIXED_PROMPTS = (  # used when the ShareGPT file is absent
    "Explain how a paged KV cache lets an inference server batch requests of different lengths.",
    "Write a short story about a lighthouse keeper who discovers a message in a bottle, in five paragraphs.",
    "List the differences between TCP and UDP and say when each is the better choice for a game server.",
    "Translate into French: the weather will be sunny tomorrow, but rain is expected on the weekend.",
)
MODEL_BLOCK_SIZE = 16  # token positions per block of the default-model engine


@dataclass(frozen=True)
class KvCodecBenchConfig:
    """One `alise bench kv-codec` run."""

    num_prompts: int  # ShareGPT prompts prefilled on the default model
    max_prompt_tokens: int  # each prompt truncated to this many tokens
    num_random_blocks: int  # blocks of the Llama-3-8B-shaped random cache encoded per call
    num_repeats: int  # timed calls per codec and direction (the median is reported)
    int4_group_size: int  # int4 group size of the timed rows (0 = kv_codec's default for head_dim)
    num_output_tokens: int  # greedy tokens per prompt in the agreement run
    swap_after_tokens: int  # the swap round trip happens after this many output tokens
    num_threads: int  # torch intra-op threads
    seed: int  # ShareGPT sample and random KV

    def __post_init__(self) -> None:
        if not 0 < self.swap_after_tokens < self.num_output_tokens:
            raise ValueError(f"swap_after_tokens must be in (0, num_output_tokens), got {self.swap_after_tokens}")


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("kv-codec", help="KV swap codecs: GB/s, size, error, greedy-token agreement")
    parser.add_argument("--num-prompts", type=arg_types.positive_int, default=16)
    parser.add_argument("--max-prompt-tokens", type=arg_types.positive_int, default=512)
    parser.add_argument("--num-random-blocks", type=arg_types.positive_int, default=16)
    parser.add_argument("--num-repeats", type=arg_types.positive_int, default=7)
    parser.add_argument("--int4-group-size", type=arg_types.non_negative_int, default=0, help="0 = default")
    parser.add_argument("--num-output-tokens", type=arg_types.positive_int, default=48)
    parser.add_argument("--swap-after-tokens", type=arg_types.positive_int, default=16)
    parser.add_argument("--num-threads", type=arg_types.positive_int, default=1)
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/kv_codec.json"))
    parser.set_defaults(handler=run)


def _prompts(config: KvCodecBenchConfig) -> tuple[str, list[list[int]]]:
    """(where the prompts come from, their token ids with BOS, truncated)."""
    from services.bench.workload import SHAREGPT, load_trace
    from services.common.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("default")
    try:
        texts = [r.prompt_text for r in load_trace(SHAREGPT, num_requests=config.num_prompts, seed=config.seed)]
        origin = "sharegpt"
    except FileNotFoundError:
        texts = [FIXED_PROMPTS[i % len(FIXED_PROMPTS)] for i in range(config.num_prompts)]
        origin = "fixed text (../shared/data absent)"
    return origin, [tokenizer.encode(text)[: config.max_prompt_tokens] for text in texts]


def _model_core_factory(config: KvCodecBenchConfig, prompts: list[list[int]]):
    """Fresh default-model engines (FCFS) with room for the prompts twice (source + decode targets)."""
    import torch

    from services.common.model_catalog import DUMMY_TINY_MODEL
    from services.engine.block_pool import KvBlockManager
    from services.engine.engine_core import EngineCore
    from services.engine.model_loader import load_model
    from services.engine.model_runner import ModelRunner
    from services.engine.scheduler import Scheduler, SchedulerLimits, make_policy

    loaded = load_model(DUMMY_TINY_MODEL, dtype=torch.float32, device=torch.device("cpu"), seed=0)
    num_tokens = sum(len(p) + config.num_output_tokens for p in prompts)
    num_blocks = 2 * (num_tokens // MODEL_BLOCK_SIZE + len(prompts) + 1)
    limits = SchedulerLimits(len(prompts), max(512, num_tokens), loaded.max_context_tokens)

    def make_core() -> EngineCore:
        kv = KvBlockManager(num_blocks, MODEL_BLOCK_SIZE)
        scheduler = Scheduler(make_policy("fcfs"), limits, kv, loaded.eos_token_id)
        return EngineCore(scheduler, ModelRunner(loaded.model, kv, num_blocks))

    return make_core


def _sources(config: KvCodecBenchConfig, core, origin: str, prompts: list[list[int]]) -> list:
    """Codec figures on the prefilled default-model KV and on the random Llama-3-8B-shaped cache."""
    import torch

    from services.engine.kv_cache import KvCacheShape
    from services.engine.kv_offload import codec_measure
    from services.engine.kv_offload.kv_codec import default_int4_group_size

    source_ids = codec_measure.prefill(core, prompts)
    used = set(source_ids)
    free = [b for b in range(core.runner.cache_shape.num_blocks) if b not in used]
    group = config.int4_group_size or default_int4_group_size(core.runner.head_dim)
    model_source = codec_measure.measure_source(
        f"default model KV after prefill of {len(prompts)} {origin} prompts ({sum(map(len, prompts))} tokens)",
        core.runner.cache,
        source_ids,
        free[: len(source_ids)],
        group,
        config.num_repeats,
    )
    n = config.num_random_blocks
    shape = KvCacheShape(num_layers=32, num_blocks=2 * n, block_size=16, num_kv_heads=8, head_dim=128)
    cache = codec_measure.random_cache(shape, torch.bfloat16, config.seed)
    group = config.int4_group_size or default_int4_group_size(shape.head_dim)
    random_source = codec_measure.measure_source(
        "Gaussian KV, Llama-3-8B shape", cache, list(range(n)), list(range(n, 2 * n)), group, config.num_repeats
    )
    return [model_source, random_source]


def measure(config: KvCodecBenchConfig) -> dict[str, object]:
    import torch

    from services.engine.kv_offload import swap_agreement
    from services.engine.kv_offload.kv_codec import KvCodec

    torch.set_num_threads(config.num_threads)
    origin, prompts = _prompts(config)
    make_core = _model_core_factory(config, prompts)
    sources = _sources(config, make_core(), origin, prompts)
    reference = swap_agreement.generate(make_core(), prompts, config.num_output_tokens)
    agreements = [
        swap_agreement.measure_agreement(
            make_core,
            prompts,
            codec,
            num_output_tokens=config.num_output_tokens,
            swap_after_tokens=config.swap_after_tokens,
            int4_group_size=config.int4_group_size or None,
            reference=reference,
        )
        for codec in KvCodec
    ]
    return {
        "prompt_origin": origin,
        "num_prompt_tokens": [len(p) for p in prompts],
        "sources": sources,
        "greedy_agreement": agreements,
    }


def _print(figures: dict[str, object]) -> None:
    for source in figures["sources"]:
        print(
            f"\n{source.source}: {source.num_blocks} blocks, {source.source_bytes / 2**20:.1f} MiB {source.dtype}"
            f" (int4 group {source.int4_group_size})"
        )
        print(f"{'':<27} {'GB/s per wall s':>17} {'GB/s per CPU s':>17}")
        print(
            f"{'codec':<6} {'bytes':>13} {'ratio':>6} {'encode':>8} {'decode':>8} {'encode':>8} {'decode':>8}"
            f" {'rel error':>10}"
        )
        for row in source.codecs:
            print(
                f"{row.codec:<6} {row.encoded_bytes:>13,d} {row.size_ratio:>6.3f} {row.encode_gb_s:>8.3f}"
                f" {row.decode_gb_s:>8.3f} {row.encode_cpu_gb_s:>8.3f} {row.decode_cpu_gb_s:>8.3f}"
                f" {row.relative_error:>10.3%}"
            )
        groups = ", ".join(f"{g}: {e:.2%}" for g, e in source.int4_error_by_group_size.items())
        print(f"int4 error by group size: {groups}")
    print("\ngreedy tokens after a swap round trip vs no swap (default model)")
    for row in figures["greedy_agreement"]:
        print(
            f"{row.codec:<6} {row.num_identical_tokens:>4}/{row.num_compared_tokens:<4} identical"
            f" ({row.identical_share:.1%}); first divergence per prompt {row.first_divergence}"
        )


def run(args: argparse.Namespace) -> int:
    from services.bench.results import build_report, write_report

    try:
        config = KvCodecBenchConfig(
            args.num_prompts,
            args.max_prompt_tokens,
            args.num_random_blocks,
            args.num_repeats,
            args.int4_group_size,
            args.num_output_tokens,
            args.swap_after_tokens,
            args.num_threads,
            args.seed,
        )
        figures = measure(config)
    except ValueError as error:  # bad settings (e.g. a group size that does not divide head_dim)
        print_error("alise bench kv-codec", str(error))
        return 2
    _print(figures)
    path = write_report(args.out, build_report("kv_codec", config, figures))
    print(f"saved {path}")
    return 0
