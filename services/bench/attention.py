"""`alise bench attention`: the paged attention kernel against the GPU's memory bandwidth (GPU only).

Sweeps batch x context x {MHA, GQA-8} x {bf16, int8 KV} at Llama-3-8B head shapes (32 query
heads of 128; GQA-8 = 8 KV heads), and for each point reports the kernel's median time, its
achieved bandwidth (minimum bytes / time) as a share of the device-to-device copy bandwidth
measured in the same run, and torch SDPA on dense KV and after gathering the paged KV (bf16
points; int8 points are compared with the bf16 baselines of the same shape). Then mixed steps
(decodes + prefill chunks, verify queries): the varlen launch vs the per-request path it replaced
(attention_mixed.py). Then, unless
--skip-e2e, end-to-end tokens/s of a Llama-3-8B-shaped model (attention_e2e.py). Saves JSON and a PNG.
On a machine without CUDA it prints why and exits with status 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
from dataclasses import asdict, dataclass
from typing import Any

from services.common import arg_types, run_info
from services.common.cli_errors import print_error

LAYOUT_KV_HEADS = {"mha": 0, "gqa8": 8}  # kv heads per layout; 0 = as many as query heads
KV_DTYPES = ("bf16", "int8")
DEFAULT_BATCHES = (1, 8, 32, 64, 128, 256)
DEFAULT_CONTEXTS = (128, 256, 512, 1024, 2048, 4096, 8192)
EXIT_NO_GPU = 1


@dataclass(frozen=True)
class BenchAttentionConfig:
    """Settings of one run (saved with the results)."""

    batches: tuple[int, ...]  # sequences per decode call
    context_lens: tuple[int, ...]  # positions per sequence
    layouts: tuple[str, ...]  # keys of LAYOUT_KV_HEADS
    kv_dtypes: tuple[str, ...]  # from KV_DTYPES
    num_heads: int  # query heads
    head_dim: int  # elements per head (64 or 128)
    block_size: int  # positions per KV block (16 or 32)
    num_warmup: int  # untimed calls before timing each point
    num_iters: int  # timed calls per point (the median is reported)
    baselines: bool  # also time torch SDPA (dense, and after gathering the paged KV)
    e2e: bool  # also run the end-to-end tokens/s comparison
    e2e_batches: tuple[int, ...]  # batch sizes of the end-to-end runs
    e2e_context_len: int  # prompt tokens per request in the end-to-end runs
    e2e_output_tokens: int  # generated tokens per request in the end-to-end runs
    seed: int  # seeds every random input

    def __post_init__(self) -> None:
        unknown = set(self.layouts) - set(LAYOUT_KV_HEADS) | set(self.kv_dtypes) - set(KV_DTYPES)
        if unknown:
            raise ValueError(f"unknown layouts / kv dtypes: {sorted(unknown)}")
        if self.head_dim not in (64, 128) or self.block_size not in (16, 32):
            raise ValueError("head_dim must be 64 or 128 and block_size 16 or 32")
        if self.num_heads % 8:
            raise ValueError(f"num_heads must be a multiple of 8 (GQA-8), got {self.num_heads}")
        if min(self.batches + self.context_lens + self.e2e_batches) <= 0 or self.num_iters <= 0:
            raise ValueError("batches, contexts and num_iters must be > 0")


def add_parser(kinds: argparse._SubParsersAction) -> None:
    """Registers `bench attention` and its flags under `alise bench`."""
    parser = kinds.add_parser("attention", help="paged decode kernel vs memory bandwidth and SDPA (GPU)")
    parser.add_argument("--batches", type=arg_types.positive_int, nargs="+", default=list(DEFAULT_BATCHES))
    parser.add_argument("--contexts", type=arg_types.positive_int, nargs="+", default=list(DEFAULT_CONTEXTS))
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUT_KV_HEADS), default=sorted(LAYOUT_KV_HEADS))
    parser.add_argument("--kv-dtypes", nargs="+", choices=KV_DTYPES, default=list(KV_DTYPES))
    parser.add_argument("--num-heads", type=arg_types.positive_int, default=32)
    parser.add_argument("--head-dim", type=int, choices=(64, 128), default=128)
    parser.add_argument("--block-size", type=int, choices=(16, 32), default=16)
    parser.add_argument("--num-warmup", type=arg_types.non_negative_int, default=5)
    parser.add_argument("--num-iters", type=arg_types.positive_int, default=20)
    parser.add_argument("--no-baselines", action="store_true", help="skip the torch SDPA timings")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end Llama-3-8B-shaped run")
    parser.add_argument("--e2e-batches", type=arg_types.positive_int, nargs="+", default=[64, 256])
    parser.add_argument("--e2e-context", type=arg_types.positive_int, default=1024)
    parser.add_argument("--e2e-output-tokens", type=arg_types.positive_int, default=128)
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/bench_attention.json"))
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> BenchAttentionConfig:
    return BenchAttentionConfig(
        batches=tuple(args.batches),
        context_lens=tuple(args.contexts),
        layouts=tuple(args.layouts),
        kv_dtypes=tuple(args.kv_dtypes),
        num_heads=args.num_heads,
        head_dim=args.head_dim,
        block_size=args.block_size,
        num_warmup=args.num_warmup,
        num_iters=args.num_iters,
        baselines=not args.no_baselines,
        e2e=not args.skip_e2e,
        e2e_batches=tuple(args.e2e_batches),
        e2e_context_len=args.e2e_context,
        e2e_output_tokens=args.e2e_output_tokens,
        seed=args.seed,
    )


def gpu_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    from services.engine.kernels.loader import KernelUnavailable, cuda_unavailable_reason, load_kernels

    reason = cuda_unavailable_reason()
    if reason is not None:
        return f"needs a CUDA GPU: {reason}"
    try:
        load_kernels()
    except KernelUnavailable as error:
        return str(error)
    return None


def run(args: argparse.Namespace) -> int:
    """Runs `alise bench attention`; returns the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        print_error("alise bench attention", str(error))
        return 2
    problem = gpu_problem()
    if problem is not None:
        print_error("alise bench attention", problem)
        return EXIT_NO_GPU
    from services.bench import attention_report, attention_sweep

    report = _report_header(config)
    report.update(attention_sweep.run_sweep(config))
    print(attention_report.format_table(report))
    import torch

    from services.bench import attention_mixed
    from services.bench.attention_measure import Timer

    report["mixed"] = attention_mixed.run_mixed(
        config, Timer(torch.device("cuda"), config.num_warmup, config.num_iters)
    )
    print(attention_mixed.format_mixed(report["mixed"]))
    if config.e2e:
        from services.bench import attention_e2e

        report["e2e"] = attention_e2e.run_e2e(config, report["copy_bandwidth_gb_per_s"])
        print(attention_report.format_e2e(report["e2e"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot = attention_report.save_plot(report, args.out.with_suffix(".png"))
    print(f"saved {args.out}" + (f" and {plot}" if plot else ""))
    return 0


def _report_header(config: BenchAttentionConfig) -> dict[str, Any]:
    import torch

    properties = torch.cuda.get_device_properties(0)
    return {
        "benchmark": "attention",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": run_info.machine_info(),
        "git": run_info.git_info(),
        "gpu": {
            "name": properties.name,
            "compute_capability": f"{properties.major}.{properties.minor}",
            "memory_bytes": properties.total_memory,
            "num_sms": properties.multi_processor_count,
        },
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "config": asdict(config),
    }
