"""`python -m services.predictor.cli ...`: the predictor's own offline commands (also under `alise predictor`).

    train --out DIR [--seed 0] [--data-dir ../shared/data] [--generator G ... | --all-generators]
          [--no-sharegpt] [--from-feedback DIR [--include-censored]] [--no-embedding | --frozen-embedding]
          [--finetune-folds 3] [--finetune-frozen-layers 4] [--max-examples N] [--no-calibration] [--ranking-weight 1.0]
          [--soft-pair-weight 1.0] [--content-features] [--word-pieces 32]
    export-embedding [--cache-dir DIR]     build the cached MiniLM ONNX graphs now (install step)

`alise predictor eval` and `alise predictor bench` measure a model and are benchmarks: they live in
services/bench (predictor_eval.py, predictor_bench.py) and services/cli/predictor_cmd.py joins them
with these two, so this package imports nothing outside itself and services.common.
Serving is `python -m services.predictor` (see __main__.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.common.cache_dir import default_cache_dir
from services.common.cli_errors import print_error
from services.predictor.embedding import DEFAULT_WORD_PIECES
from services.predictor.finetune_model import NUM_FROZEN_LAYERS

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a length model and write it as ONNX + metadata.json")
    train.add_argument("--out", type=Path, required=True, help="output model directory")
    train.add_argument("--seed", type=int, default=0, help="seed of split, subsampling and XGBoost")
    train.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared data folder")
    train.add_argument(
        "--generator",
        action="append",
        default=[],
        help="add this AlpacaEval generator's answers (repeatable), e.g. text_davinci_003",
    )
    train.add_argument("--all-generators", action="store_true", help="add all 10 AlpacaEval generators")
    train.add_argument("--no-sharegpt", action="store_true", help="leave the ShareGPT first turns out")
    train.add_argument(
        "--from-feedback",
        type=Path,
        default=None,
        help="add the served model's recorded lengths from this feedback directory",
    )
    train.add_argument(
        "--include-censored",
        action="store_true",
        help="with --from-feedback: count LENGTH-capped requests with their cap as length",
    )
    train.add_argument("--default-generator", default="", help="generator served by default ('' = automatic)")
    train.add_argument("--no-embedding", action="store_true", help="lexical features only (no MiniLM)")
    train.add_argument(
        "--frozen-embedding",
        action="store_true",
        help="ridge over the frozen MiniLM embedding instead of fine-tuning its top layers",
    )
    train.add_argument(
        "--finetune-folds", type=int, default=3, help="out-of-fold fine-tuned encoders that score the training rows"
    )
    train.add_argument(
        "--finetune-frozen-layers",
        type=int,
        default=NUM_FROZEN_LAYERS,
        help="MiniLM layers left frozen under the fine-tuned encoder (0 = retrain all six: better, ~3x the training)",
    )
    train.add_argument(
        "--word-pieces",
        type=int,
        default=DEFAULT_WORD_PIECES,
        help="MiniLM window per prompt, head + tail, [CLS] and [SEP] included (served with the model; "
        "more costs CPU per prompt)",
    )
    train.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default ~/.cache/alise)")
    train.add_argument("--heldout-fraction", type=float, default=0.2, help="share of prompts held out")
    train.add_argument("--max-examples", type=int, default=0, help="subsample to this many (0 = all)")
    train.add_argument("--threads", type=int, default=2, help="XGBoost and ONNX Runtime threads")
    train.add_argument("--max-trees", type=int, default=600, help="boosting rounds per head")
    train.add_argument("--max-depth", type=int, default=6, help="tree depth")
    train.add_argument(
        "--no-calibration",
        action="store_true",
        help="keep the trees' p10 / p90 as fitted (no per-bin calibration step)",
    )
    train.add_argument(
        "--ranking-weight",
        type=float,
        default=1.0,
        help="weight of the encoder's pairwise ranking loss next to regression (0 = regression only)",
    )
    train.add_argument(
        "--soft-pair-weight",
        type=float,
        default=1.0,
        help="weight of soft ranking pairs from AlpacaEval's 227 length-only generators "
        "(with AlpacaEval generators; 0 = off)",
    )
    train.add_argument(
        "--content-features",
        action="store_true",
        help="add content columns: code lines, URLs, tables / JSON, pasted documents",
    )
    train.set_defaults(handler=_train)


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export-embedding", help="build the cached MiniLM ONNX graphs now")
    export.add_argument("--cache-dir", type=Path, default=None, help="cache directory (default ~/.cache/alise)")
    export.set_defaults(handler=_export_embedding)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alise predictor", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_parser(commands)
    add_export_parser(commands)
    return parser


def _train(args: argparse.Namespace) -> int:
    from services.predictor.data import ALPACA_EVAL_GENERATORS
    from services.predictor.eval_report import format_table
    from services.predictor.train import TrainSettings, run_training

    use_sharegpt = not args.no_sharegpt
    if args.from_feedback is not None and not args.data_dir.is_dir() and use_sharegpt and not args.generator:
        print(f"{args.data_dir} not found: training on the feedback only", flush=True)
        use_sharegpt = False
    settings = TrainSettings(
        data_dir=args.data_dir,
        out_dir=args.out,
        seed=args.seed,
        generators=ALPACA_EVAL_GENERATORS if args.all_generators else tuple(args.generator),
        use_sharegpt=use_sharegpt,
        feedback_dir=args.from_feedback,
        include_censored=args.include_censored,
        default_generator=args.default_generator,
        use_embedding=not args.no_embedding,
        cache_dir=args.cache_dir,
        finetune_encoder=not args.frozen_embedding,
        finetune_folds=args.finetune_folds,
        finetune_frozen_layers=args.finetune_frozen_layers,
        word_pieces=args.word_pieces,
        heldout_fraction=args.heldout_fraction,
        max_examples=args.max_examples,
        num_threads=args.threads,
        max_trees=args.max_trees,
        max_depth=args.max_depth,
        calibrate=not args.no_calibration,
        ranking_weight=args.ranking_weight,
        soft_pair_weight=args.soft_pair_weight,
        content_features=args.content_features,
    )
    metadata = run_training(settings, progress=lambda line: print(line, flush=True))
    print("held-out metrics:")
    print(format_table(metadata.heldout_metrics))
    return 0


def _export_embedding(args: argparse.Namespace) -> int:
    from services.predictor.artifact import read_metadata
    from services.predictor.config import DEFAULT_MODEL_DIR
    from services.predictor.embedding import ensure_embedding_model
    from services.predictor.finetune_encoder import EncoderSpec, ensure_bottom_graph

    cache_dir = args.cache_dir or default_cache_dir()
    path = ensure_embedding_model(cache_dir, progress=lambda line: print(line, flush=True))
    print(f"embedding graph: {path}")
    # the bottom graph the shipped default model reads (its split of MiniLM's layers), else the default split
    version = read_metadata(DEFAULT_MODEL_DIR).encoder_version
    spec = EncoderSpec.from_version(version) if version else EncoderSpec()
    bottom = ensure_bottom_graph(cache_dir, spec, progress=lambda line: print(line, flush=True))
    print(f"fine-tuned encoder's bottom graph: {bottom}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Runs the parsed command's handler; a missing file or a bad value is a usage error (status 2)."""
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError) as error:
        print_error(f"alise predictor {args.command}", str(error))
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m services.predictor.cli`; returns the process exit status."""
    return run_command(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
