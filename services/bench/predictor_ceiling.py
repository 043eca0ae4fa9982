"""`alise predictor ceiling`: how far can ranking single-sample labels go, next to the model (issue 20).

A prompt-only predictor cannot beat the label's own randomness. Three measurements (methods in
predictor_ceiling_stats and predictor_ceiling_data), each beside the model on the same prompts:

1. AlpacaEval, per served generator: tau of its lengths against the leave-one-out mean / median log
   length of the other 226 generators on the same instruction, on the model's held-out instructions
   (split as `alise predictor eval` splits them) and on all of them; the model's p50 tau on the
   held-out ones, and its share of the cross-model figure.
2. ShareGPT prompts answered in >= 2 conversations by different answers: tau between two answers,
   one pair per prompt, and the ideal predictor's tau implied by it (Gaussian model).
3. `--samples A.jsonl --samples B.jsonl`: the served model answering the same prompts twice with
   different seeds (collect-lengths output): the same two figures for the labels the engine serves.
Prompts the model was trained on make its figure optimistic: it is given on all of them and on the
held-out ones apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from services.bench import predictor_ceiling_stats as stats
from services.bench.predictor_ceiling_data import (
    RepeatedPrompts,
    alpaca_eval_lengths,
    sample_files_repeated,
    sharegpt_repeated,
)
from services.bench.predictor_eval import DEFAULT_EVAL_DIR, input_rows, load_file_rows
from services.predictor import data
from services.predictor.cli import DEFAULT_DATA_DIR
from services.predictor.config import DEFAULT_MODEL_DIR
from services.predictor.eval_report import write_json
from services.predictor.model import LengthPredictor
from services.predictor.reload import LoadSettings, PredictorLoader

SERVED_PREFIX = "served:"  # generator column of the served model's feedback lengths


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `ceiling` under `alise predictor`."""
    ceiling = commands.add_parser("ceiling", help="best tau any prompt-only predictor can reach on our labels")
    ceiling.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model compared on the same rows")
    ceiling.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared data folder")
    ceiling.add_argument(
        "--samples",
        type=Path,
        action="append",
        default=[],
        help="collect-lengths JSONL of the served model, one per seed (>= 2, same prompts)",
    )
    ceiling.add_argument(
        "--exclude-prompts-in",
        type=Path,
        action="append",
        default=[],
        help="leave out prompts whose normalized text occurs in this data file (repeatable), as in eval",
    )
    ceiling.add_argument("--served-generator", default="", help="model column for --samples (default: served:*)")
    ceiling.add_argument("--out-dir", type=Path, default=DEFAULT_EVAL_DIR, help="where the JSON goes")
    ceiling.add_argument("--name", default="ceiling", help="file name stem of the JSON")
    ceiling.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the embedding")
    ceiling.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default ~/.cache/alise)")
    ceiling.set_defaults(handler=run_ceiling)


def _p50(predictor: LengthPredictor, examples: list[data.LengthExample], generator: str, cache_dir: Path) -> np.ndarray:
    """The model's p50 for each example under one generator column."""
    rows = input_rows(predictor, examples, [generator] * len(examples), cache_dir)
    _, quantiles = predictor.model.predict_matrix(rows.matrix)
    return quantiles[:, predictor.model.metadata.quantile_levels.index(0.5)]


def _heldout_mask(predictor: LengthPredictor, examples: list[data.LengthExample]) -> np.ndarray:
    meta = predictor.model.metadata
    fraction = float(meta.training.get("heldout_fraction", 0.2))
    return np.array([data.is_heldout(e.group_id, heldout_fraction=fraction, seed=meta.seed) for e in examples], bool)


def alpaca_eval_section(predictor: LengthPredictor, args: argparse.Namespace) -> dict[str, dict]:
    """Per generator of the model: cross-model leave-one-out tau vs the model's, same held-out rows."""
    generators, log_lengths = alpaca_eval_lengths(args.data_dir)
    eval_args = argparse.Namespace(
        data_dir=args.data_dir,
        heldout_only=True,
        exclude_prompts_in=args.exclude_prompts_in,
        max_examples=0,
        generator="",
    )
    heldout = load_file_rows(args.data_dir / data.ALPACA_EVAL_FILE, predictor, eval_args)
    all_keys = list(log_lengths)
    matrix = np.stack([log_lengths[key] for key in all_keys])
    section = {}
    for generator in sorted(set(heldout.generators)):
        name = generator.removeprefix(data.ALPACA_EVAL_SOURCE_PREFIX)
        if name not in generators:
            continue
        column = generators.index(name)
        examples = [e for e, g in zip(heldout.examples, heldout.generators) if g == generator]
        examples = [e for e in examples if data.prompt_key(e.prompt_text) in log_lengths]
        rows = np.stack([log_lengths[data.prompt_key(e.prompt_text)] for e in examples])
        truth = np.log([e.num_output_tokens for e in examples])
        model = stats.paired_tau(_p50(predictor, examples, generator, args.cache_dir), truth)
        loo_mean = stats.paired_tau(stats.leave_one_out_scores(rows, column), truth)
        loo_median = stats.paired_tau(stats.leave_one_out_scores(rows, column, use_median=True), truth)
        present = ~np.isnan(matrix[:, column])
        everywhere = stats.paired_tau(stats.leave_one_out_scores(matrix, column)[present], matrix[present, column])
        section[name] = {
            "heldout_model": model.as_dict(),
            "heldout_cross_model_mean": loo_mean.as_dict(),
            "heldout_cross_model_median": loo_median.as_dict(),
            "all_instructions_cross_model_mean": everywhere.as_dict(),
            "model_share_of_cross_model": model.tau / loo_mean.tau,
        }
    return section


def repeated_section(
    predictor: LengthPredictor, repeated: RepeatedPrompts, generator: str, source: str, args: argparse.Namespace
) -> dict:
    """Sample-vs-sample tau, the implied ideal predictor, and the model on the same prompts."""
    examples = [
        data.LengthExample(text, tokens, int(answers[0]), source, f"{source}:{data.prompt_key(text)}")
        for text, tokens, answers in zip(repeated.texts, repeated.num_prompt_tokens, repeated.answers)
    ]
    examples = data.canonical_groups(examples, _reference_examples(args))
    scores = _p50(predictor, examples, generator, args.cache_dir)
    heldout = _heldout_mask(predictor, examples)
    pairs = stats.pair_tau(repeated.answers)
    heldout_answers = [a for a, keep in zip(repeated.answers, heldout) if keep]
    return {
        "num_prompts": len(repeated.texts),
        "num_answers": repeated.num_answers,
        "num_capped_answers": repeated.num_capped_answers,
        "sample_vs_sample": pairs.as_dict(),
        "ideal_predictor_gaussian": {
            "tau": stats.gaussian_ceiling_tau(pairs.tau),
            "ci95_low": stats.gaussian_ceiling_tau(pairs.low),
            "ci95_high": stats.gaussian_ceiling_tau(pairs.high),
        },
        "model_generator_column": generator,
        "model_all_prompts": stats.predictor_tau(scores, repeated.answers).as_dict(),
        "model_heldout_prompts": stats.predictor_tau(scores[heldout], heldout_answers).as_dict(),
        "heldout_sample_vs_sample": stats.pair_tau(heldout_answers).as_dict(),
    }


def _without(repeated: RepeatedPrompts, paths: list[Path]) -> RepeatedPrompts:
    """The prompts whose normalized text occurs in none of the files (--exclude-prompts-in)."""
    excluded = {data.prompt_key(e.prompt_text) for path in paths for e in data.load_file(path)}
    return repeated.select([data.prompt_key(text) not in excluded for text in repeated.texts])


def _reference_examples(args: argparse.Namespace) -> list[data.LengthExample]:
    """ShareGPT and AlpacaEval rows lend their groups, so prompts split as the model's training split them."""
    return data.load_sharegpt(args.data_dir) + data.load_alpaca_eval(args.data_dir, data.ALPACA_EVAL_GENERATORS)


def _served_generator(predictor: LengthPredictor, wanted: str) -> str:
    generators = predictor.model.layout.generators
    if wanted:
        if wanted not in generators:
            raise ValueError(f"generator {wanted!r} not in the model; it has {list(generators)}")
        return wanted
    served = [g for g in generators if g.startswith(SERVED_PREFIX)]
    return served[0] if served else predictor.model.metadata.default_generator


def run_ceiling(args: argparse.Namespace) -> int:
    """Measures, prints a summary and writes the JSON under args.out_dir."""
    from services.bench.predictor_ceiling_report import print_summary
    from services.common.run_info import git_info, machine_info

    if len(args.samples) == 1:
        raise ValueError("--samples: give at least 2 files (one per seed), or none")
    for path in [*args.samples, *args.exclude_prompts_in]:
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
    predictor = PredictorLoader(LoadSettings(args.model_dir, args.cache_dir, 1, args.threads, allow_cuda=False)).load()
    sharegpt_path = args.data_dir / data.SHAREGPT_FILE
    report: dict = {
        "model_version": predictor.model.metadata.model_version,
        "excluded_prompts_in": [str(path) for path in args.exclude_prompts_in],
        "method": __doc__,
        "alpaca_eval": alpaca_eval_section(predictor, args),
        "sharegpt_repeated_prompts": repeated_section(
            predictor,
            _without(sharegpt_repeated(sharegpt_path), args.exclude_prompts_in),
            data.SOURCE_SHAREGPT,
            data.SOURCE_SHAREGPT,
            args,
        ),
    }
    if args.samples:
        generator = _served_generator(predictor, args.served_generator)
        repeated = _without(sample_files_repeated(args.samples), args.exclude_prompts_in)
        report["served_model_samples"] = repeated_section(predictor, repeated, generator, "jsonl:samples", args)
        report["served_model_samples"]["files"] = [
            {"path": str(path), "sha256": data.file_sha256(path)} for path in args.samples
        ]
    report.update(machine=machine_info(), git=git_info())
    print_summary(report)
    json_path = args.out_dir / f"{args.name}.json"
    write_json(json_path, report)
    print(f"wrote {json_path}")
    return 0
