"""`alise spec ...`: offline commands of speculative decoding.

    alise spec train-exit-heads   trains the early-exit heads of a model by self-distillation on
                                  ../shared/data, writes services/engine/spec/heads/<model>.npz/.json
                                  and the before/after report docs/benchmarks/spec/exit_heads.json

torch and the engine are imported only when a command runs (`alise spec --help` stays light).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from services.common import arg_types
from services.common.cli_errors import print_error
from services.common.run_info import REPO_ROOT

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_REPORT = REPO_ROOT / "docs" / "benchmarks" / "spec" / "exit_heads.json"
EXIT_FAILURE = 1


def _layers(text: str) -> tuple[int, ...]:
    try:
        layers = arg_types.comma_list(text, int)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer counts, got {text!r}") from None
    if not layers:
        raise argparse.ArgumentTypeError("give at least one layer")
    return layers


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("spec", help="speculative decoding: train the early-exit heads")
    commands = parser.add_subparsers(dest="spec_command", metavar="COMMAND", required=True)
    train = commands.add_parser("train-exit-heads", help="self-distil exit heads; write the artifact and report")
    train.add_argument("--model", default="smollm2-135m-instruct", help="a --model value with real weights")
    train.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared data (ShareGPT)")
    train.add_argument("--out-dir", type=Path, default=None, help="artifact folder (default: the shipped heads/)")
    train.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="report JSON path")
    train.add_argument("--layers", type=_layers, default=None, help="candidate exit layers, e.g. 6,12,18,24")
    train.add_argument("--draft-vocab-size", type=arg_types.non_negative_int, default=4096, help="0 = full vocab")
    train.add_argument("--rank", type=arg_types.positive_int, default=128, help="rank of each head's map")
    train.add_argument("--num-epochs", type=arg_types.positive_int, default=3)
    train.add_argument("--num-train-conversations", type=arg_types.positive_int, default=150)
    train.add_argument("--num-heldout-conversations", type=arg_types.positive_int, default=30)
    train.add_argument("--num-generated-prompts", type=arg_types.non_negative_int, default=6)
    train.add_argument(
        "--cost-dtype", choices=("auto", "float32", "bfloat16"), default="auto", help="auto: the engine's CPU dtype"
    )
    train.add_argument("--seed", type=arg_types.seed, default=0)
    train.set_defaults(handler=run_train_exit_heads)


def _config(args: argparse.Namespace):
    from services.engine.spec.exit_head_build import DEFAULT_LAYERS, ExitHeadBuildConfig
    from services.engine.spec.exit_head_training import HeadTrainingConfig

    extra = {} if args.out_dir is None else {"out_dir": args.out_dir}
    return ExitHeadBuildConfig(
        data_dir=args.data_dir,
        model=args.model,
        layers=args.layers or DEFAULT_LAYERS,
        draft_vocab_size=args.draft_vocab_size,
        num_train_conversations=args.num_train_conversations,
        num_heldout_conversations=args.num_heldout_conversations,
        num_generated_prompts=args.num_generated_prompts,
        training=HeadTrainingConfig(rank=args.rank, num_epochs=args.num_epochs, seed=args.seed),
        cost_dtype=args.cost_dtype,
        seed=args.seed,
        **extra,
    )


def _print_summary(report: dict) -> None:
    print(f"decode step {report['decode_step_ms']:.1f} ms; verify cost ratio {report['verify_cost_ratio']}")
    label = "on_policy_" if report["best_layer_agreement"].startswith("on_policy") else ""
    print(f"  L  agree before->after (on-policy before->after)  draft ms (ratio)  {label}speedup k=2 / k=4")
    for row in report["layers"]:
        print(
            f"{row['num_layers']:3d}  {row['agreement_untrained']:.3f} -> {row['agreement_trained']:.3f} "
            f"({row['on_policy_agreement_untrained']:.3f} -> {row['on_policy_agreement_trained']:.3f})  "
            f"{row['draft_ms']:7.2f} ({row['draft_cost_ratio']:.3f})  "
            f"{row[label + 'speedup_k2']:.3f} / {row[label + 'speedup_k4']:.3f}"
        )
    print(f"best layer ({report['best_layer_agreement']}): {report['best_layer']}; took {report['timings_s']} s")


def run_train_exit_heads(args: argparse.Namespace) -> int:
    import torch

    from services.common.model_manifest import ModelFilesError
    from services.engine.spec.exit_head_build import build_exit_heads

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        npz_path, json_path, report = build_exit_heads(_config(args))
    except (ValueError, FileNotFoundError, ModelFilesError) as error:
        print_error("alise spec train-exit-heads", str(error))
        return EXIT_FAILURE
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _print_summary(report)
    print(f"wrote {npz_path} ({npz_path.stat().st_size} bytes), {json_path}, {args.report}")
    return 0
