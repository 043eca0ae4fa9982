"""`alise predictor ...` / `python -m services.predictor.cli ...`: offline commands of the predictor.

    train --out DIR [--seed 0] [--data-dir ../shared/data] [--generator text_davinci_003 ...]
          [--no-sharegpt] [--max-examples N] [--threads 2] [--max-trees 300]
    eval  [--model-dir DIR] [--data-dir ...]   held-out metrics of a model on the split it was
                                               trained with (same seed and sources)

Serving is `python -m services.predictor` (see __main__.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.predictor.config import DEFAULT_MODEL_DIR

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_METRICS_SHOWN = (
    "num_examples", "kendall_tau_p50", "kendall_tau_mean", "baseline_tau_prompt_tokens",
    "mae_p50_tokens", "mae_mean_tokens", "baseline_mae_train_median_tokens",
    "coverage_p10", "coverage_p50", "coverage_p90",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alise predictor", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a length model and write it as ONNX + metadata.json")
    train.add_argument("--out", type=Path, required=True, help="output model directory")
    train.add_argument("--seed", type=int, default=0, help="seed of split, subsampling and XGBoost")
    train.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared data folder")
    train.add_argument("--generator", action="append", default=[],
                       help="add this AlpacaEval generator's answers (repeatable), e.g. text_davinci_003")
    train.add_argument("--no-sharegpt", action="store_true", help="leave the ShareGPT first turns out")
    train.add_argument("--heldout-fraction", type=float, default=0.2, help="share of prompts held out")
    train.add_argument("--max-examples", type=int, default=0, help="subsample to this many (0 = all)")
    train.add_argument("--threads", type=int, default=2, help="XGBoost threads")
    train.add_argument("--max-trees", type=int, default=300, help="boosting rounds per head")
    train.add_argument("--max-depth", type=int, default=6, help="tree depth")
    evaluate = commands.add_parser("eval", help="held-out metrics of a trained model")
    evaluate.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model directory")
    evaluate.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared data folder")
    return parser


def print_metrics(metrics: dict[str, dict[str, float]]) -> None:
    """One row per headline metric, one column per split (all, then each source)."""
    splits = list(metrics)
    print("held-out metrics:")
    print(f"  {'':<34}" + "".join(f"{name:>30}" for name in splits))
    for name in _METRICS_SHOWN:
        cells = "".join(f"{metrics[split].get(name, float('nan')):>30.4g}" for split in splits)
        print(f"  {name:<34}{cells}")


def _train(args: argparse.Namespace) -> int:
    from services.predictor.train import TrainSettings, run_training

    settings = TrainSettings(
        data_dir=args.data_dir,
        out_dir=args.out,
        seed=args.seed,
        generators=tuple(args.generator),
        use_sharegpt=not args.no_sharegpt,
        heldout_fraction=args.heldout_fraction,
        max_examples=args.max_examples,
        num_threads=args.threads,
        max_trees=args.max_trees,
        max_depth=args.max_depth,
    )
    metadata = run_training(settings, progress=lambda line: print(line, flush=True))
    print_metrics(metadata.heldout_metrics)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from services.predictor import data
    from services.predictor.data import ALPACA_EVAL_SOURCE_PREFIX, SOURCE_SHAREGPT
    from services.predictor.model import LengthModel
    from services.predictor.train import TrainSettings, evaluate, load_examples

    model = LengthModel(args.model_dir, allow_cuda=False)
    meta = model.metadata
    prefix = ALPACA_EVAL_SOURCE_PREFIX
    generators = tuple(source[len(prefix) :] for source in meta.sources if source.startswith(prefix))
    settings = TrainSettings(
        data_dir=args.data_dir, out_dir=args.model_dir, seed=meta.seed, generators=generators,
        use_sharegpt=SOURCE_SHAREGPT in meta.sources,
        heldout_fraction=float(meta.training.get("heldout_fraction", 0.2)),
        max_examples=int(meta.training.get("max_examples", 0)),
    )
    examples, hashes = load_examples(settings)
    if hashes != meta.data_files_sha256:
        print("warning: data files differ from the ones the model was trained on", file=sys.stderr)
    examples = data.subsample(examples, max_examples=settings.max_examples, seed=settings.seed)
    _, heldout = data.split_by_group(examples, heldout_fraction=settings.heldout_fraction, seed=settings.seed)
    train_median = float(meta.training.get("train_median_tokens", 0.0))
    print(f"model {meta.model_version}: {len(heldout)} held-out examples")
    print_metrics(evaluate(model, heldout, train_median_tokens=train_median))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `alise predictor`; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        return _train(args) if args.command == "train" else _eval(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"alise predictor {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
