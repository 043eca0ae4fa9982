"""`alise predictor eval`: a model and both baselines on data files; table, JSON and PNG.

Which rows count: for a file the model was trained on (same sha256 as in its metadata.json) only
the held-out groups (the model's seed and held-out fraction), since the other rows were seen in
training; for any other file, every row (`--heldout-only` forces the split anyway). Rows are
predicted for a generator column: a ShareGPT row as "sharegpt", an AlpacaEval row as its own
generator (generators the model lacks are skipped), a plain JSONL row as `--generator` or the
model's default.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from services.predictor import data
from services.predictor.baselines import Baselines
from services.predictor.cli import DEFAULT_DATA_DIR
from services.predictor.config import DEFAULT_MODEL_DIR
from services.predictor.eval_report import format_calibration, format_table, write_json, write_png
from services.predictor.evaluate import (
    EvalRows,
    calibration_by_split,
    measure_latency,
    metrics_by_split,
    predict_all,
    rows_of_examples,
)
from services.predictor.model import LengthPredictor, PromptInput
from services.predictor.reload import LoadSettings, PredictorLoader

DEFAULT_EVAL_DIR = Path("runs") / "predictor"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Registers `eval` under `alise predictor`."""
    evaluate = commands.add_parser("eval", help="a model vs both baselines on data files (JSON + PNG)")
    evaluate.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="model directory")
    evaluate.add_argument(
        "--data",
        type=Path,
        action="append",
        default=[],
        help="data file (ShareGPT, AlpacaEval or JSONL with prompt and output_tokens); "
        "repeatable; default: the model's training files, held-out rows",
    )
    evaluate.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared data folder")
    evaluate.add_argument("--generator", default="", help="generator column for plain JSONL rows")
    evaluate.add_argument("--heldout-only", action="store_true", help="keep only held-out groups of every file")
    evaluate.add_argument(
        "--exclude-prompts-in",
        type=Path,
        action="append",
        default=[],
        help="leave out rows whose normalized prompt text occurs in this data file (any row "
        "of it; repeatable): e.g. the feedback files an older model was trained on",
    )
    evaluate.add_argument(
        "--no-calibration",
        action="store_true",
        help="ignore the model's calibration step (the trees' raw p10 / p90), to measure it",
    )
    evaluate.add_argument("--max-examples", type=int, default=0, help="evaluate at most this many rows per file")
    evaluate.add_argument("--latency-prompts", type=int, default=200, help="prompts timed one by one")
    evaluate.add_argument("--out-dir", type=Path, default=DEFAULT_EVAL_DIR, help="where JSON and PNG go")
    evaluate.add_argument("--name", default="eval", help="file name stem of the JSON and PNG")
    evaluate.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads of the embedding")
    evaluate.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default ~/.cache/alise)")
    evaluate.set_defaults(handler=run_eval)


@dataclass(frozen=True)
class FileRows:
    """The rows one data file contributes."""

    path: Path  # the file
    examples: list[data.LengthExample]  # the rows evaluated
    generators: list[str]  # generator column of each row
    heldout_only: bool  # True when only the held-out groups were kept


def _generators_for(examples: list[data.LengthExample], predictor: LengthPredictor, fallback: str) -> list[str]:
    known = set(predictor.model.layout.generators)
    return [example.source if example.source in known else fallback for example in examples]


def reference_examples(path: Path, meta, args: argparse.Namespace) -> list[data.LengthExample]:
    """The model's ShareGPT and AlpacaEval training files other than path (where present): they lend
    their groups to shared prompt texts (data.canonical_groups), so a feedback file splits as in training."""
    references = []
    for name in (data.SHAREGPT_FILE, data.ALPACA_EVAL_FILE):
        other = args.data_dir / name
        if name in meta.data_files_sha256 and other.is_file() and other.resolve() != path.resolve():
            references += data.load_file(other)
    return references


def load_file_rows(path: Path, predictor: LengthPredictor, args: argparse.Namespace) -> FileRows:
    """Rows of one file, split and mapped to generator columns as the module docstring says."""
    meta = predictor.model.metadata
    known = set(meta.generators)
    prefix = data.ALPACA_EVAL_SOURCE_PREFIX
    alpaca = [g for g in data.ALPACA_EVAL_GENERATORS if prefix + g in known] or list(data.ALPACA_EVAL_GENERATORS)
    examples = data.canonical_groups(data.load_file(path, generators=alpaca), reference_examples(path, meta, args))
    trained_on = data.file_sha256(path) in set(meta.data_files_sha256.values())
    heldout_only = trained_on or args.heldout_only
    excluded = {data.prompt_key(e.prompt_text) for other in args.exclude_prompts_in for e in data.load_file(other)}
    examples = [e for e in examples if data.prompt_key(e.prompt_text) not in excluded]
    if heldout_only:
        fraction = float(meta.training.get("heldout_fraction", 0.2))
        _, examples = data.split_by_group(examples, heldout_fraction=fraction, seed=meta.seed)
    if args.max_examples:
        examples = data.subsample(examples, max_examples=args.max_examples, seed=0)
    fallback = args.generator or predictor.model.metadata.default_generator
    return FileRows(path, examples, _generators_for(examples, predictor, fallback), heldout_only)


def _rows(predictor: LengthPredictor, files: list[FileRows], cache_dir: Path) -> EvalRows:
    """Model input rows of every file."""
    examples = [example for item in files for example in item.examples]
    return input_rows(predictor, examples, [name for item in files for name in item.generators], cache_dir)


def input_rows(
    predictor: LengthPredictor, examples: list[data.LengthExample], generators: list[str], cache_dir: Path
) -> EvalRows:
    """Model input rows of examples under their generator columns (embeddings through the training
    cache: the same numbers)."""
    from services.predictor.embedding_cache import EmbeddingCache
    from services.predictor.model_inputs import build_matrix, lexical_block

    texts = [e.prompt_text for e in examples]
    lexical = lexical_block(predictor.model.layout, [(e.prompt_text, e.num_prompt_tokens) for e in examples])
    embedding = None
    if predictor.embedder is not None:
        embedding = EmbeddingCache(predictor.embedder, cache_dir).embed(texts)
    layout = predictor.model.layout
    one_hot = layout.one_hot(generators)
    head_columns = predictor.model.text_heads.columns(texts, embedding, one_hot)
    return rows_of_examples(build_matrix(layout, lexical, head_columns, one_hot), examples, generators)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluates, prints the table, writes JSON and PNG under args.out_dir."""
    from services.common.run_info import git_info, machine_info

    settings = LoadSettings(args.model_dir, args.cache_dir, 1, args.threads, allow_cuda=False)
    predictor = PredictorLoader(settings).load()
    if args.no_calibration:
        predictor.model.calibration = None
    meta = predictor.model.metadata
    paths = args.data or [
        args.data_dir / name
        for name in meta.data_files_sha256
        if not name.startswith("feedback/") and name != data.ALL_GENERATOR_LENGTHS_FILE
    ]
    files = [load_file_rows(Path(path), predictor, args) for path in paths]
    for item in files:
        print(f"{item.path}: {len(item.examples)} rows" + (" (held-out groups only)" if item.heldout_only else ""))
    rows = _rows(predictor, files, args.cache_dir)
    if rows.actual_tokens.size == 0:
        raise ValueError("no rows to evaluate")
    predictions = predict_all(predictor.model, Baselines.from_dict(meta.baselines), rows)
    metrics = metrics_by_split(rows, predictions, meta.quantile_levels)
    calibration = calibration_by_split(rows, predictions, meta.quantile_levels)
    examples = [example for item in files for example in item.examples]
    prompts = [PromptInput(e.prompt_text, e.num_prompt_tokens) for e in examples[: args.latency_prompts]]
    latency = measure_latency(predictor, prompts)
    print(f"model {meta.model_version}")
    print(format_table(metrics))
    print(format_calibration(calibration))
    print(
        f"latency (in process, 1 prompt per call over {latency.get('num_prompts', 0)} prompts): "
        f"p50 {latency.get('single_p50_ms')} ms, p99 {latency.get('single_p99_ms')} ms; "
        f"batch of {latency.get('batch_size')}: {latency.get('batch_prompts_per_s')} prompts/s"
    )
    report = {
        "model_version": meta.model_version,
        "model_dir": str(args.model_dir),
        "seed": meta.seed,
        "files": [
            {
                "path": str(item.path),
                "num_rows": len(item.examples),
                "heldout_only": item.heldout_only,
                "sha256": data.file_sha256(item.path),
            }
            for item in files
        ],
        "excluded_prompts_in": [str(path) for path in args.exclude_prompts_in],
        "calibration_step": predictor.model.calibration is not None,
        "metrics": metrics,
        "calibration": calibration,
        "latency": latency,
        "machine": machine_info(),
        "git": git_info(),
    }
    json_path = args.out_dir / f"{args.name}.json"
    write_json(json_path, report)
    png_path = args.out_dir / f"{args.name}.png"
    wrote_png = write_png(png_path, rows, predictions, meta.quantile_levels)
    print(f"wrote {json_path}" + (f" and {png_path}" if wrote_png else ""))
    return 0
