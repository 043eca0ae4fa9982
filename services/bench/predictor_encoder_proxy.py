"""The fine-tuned encoder alone, as a cheap proxy for a whole training (issue 20, window / recipe choices).

    `train`'s examples and split (ShareGPT + the 10 AlpacaEval generators, grouped by prompt text)
    one encoder fitted on every training prompt (the final encoder of `train`, no out-of-fold ones)
    held-out rows: the score of the row's own generator column against its true length, Kendall's tau
    per source and per (source, prompt kind), torch float and the served int8 graphs

A full `alise predictor train` fits four encoders and the trees on top; this fits one, so a recipe
(here: the word-piece window) can be compared in a quarter of the time. The trees' stacking lifts the
encoder's tau (docs/benchmarks/predictor/by-prompt-text/README.md, sections 4 and 8), so only
differences between variants run by this script mean something. Writes JSON, asserts nothing.

    python -m services.bench.predictor_encoder_proxy --word-pieces 64 --threads 1 --out runs/proxy-t64.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from services.bench.results import build_report, write_report
from services.predictor import data
from services.predictor.cli import DEFAULT_DATA_DIR
from services.predictor.embedding import DEFAULT_WORD_PIECES, default_cache_dir
from services.predictor.evaluate import EvalRows, rows_of_examples, split_masks
from services.predictor.metrics import kendall_tau_b
from services.predictor.train import TrainSettings, load_examples


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--word-pieces", type=int, default=DEFAULT_WORD_PIECES, help="head + tail window")
    parser.add_argument("--frozen-layers", type=int, default=0, help="MiniLM layers left frozen (0 = all six trained)")
    parser.add_argument("--seed", type=int, default=0, help="split, head initialization, batch order")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    parser.add_argument("--max-examples", type=int, default=0, help="subsample to this many (0 = all)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared data folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON output")
    return parser


def _taus(rows: EvalRows, scores: np.ndarray) -> dict[str, dict[str, float]]:
    """Kendall's tau-b of the scores against the truth in every split of evaluate.split_masks."""
    return {
        split: {
            "num_rows": int(mask.sum()),
            "kendall_tau": round(kendall_tau_b(scores[mask], rows.actual_tokens[mask]), 4),
        }
        for split, mask in split_masks(rows).items()
    }


def run(args: argparse.Namespace) -> dict:
    """Fits the encoder and measures it (see the module docstring); returns the JSON report."""
    from services.predictor.finetune_encoder import EncoderSpec, FinetunedEncoder, FrozenBottom
    from services.predictor.finetune_export import export_top_graph
    from services.predictor.finetune_model import FinetuneSettings, load_base_encoder
    from services.predictor.finetune_train import (
        bottom_states,
        deterministic_torch,
        fit_top,
        prompt_table,
        score_rows,
        with_soft_targets,
    )

    started = time.perf_counter()
    settings = TrainSettings(
        data_dir=args.data_dir,
        out_dir=Path("unused"),
        seed=args.seed,
        generators=data.ALPACA_EVAL_GENERATORS,
        max_examples=args.max_examples,
        word_pieces=args.word_pieces,
    )
    examples = data.subsample(load_examples(settings).examples, max_examples=args.max_examples, seed=args.seed)
    train, heldout = data.split_by_group(examples, heldout_fraction=settings.heldout_fraction, seed=args.seed)
    generators = tuple(sorted({example.source for example in examples}))
    _, all_lengths = data.load_all_generator_lengths(args.data_dir)  # training instructions only, as `train`
    train_texts = {example.prompt_text for example in train}
    soft = {text: lengths for text, lengths in all_lengths.items() if text in train_texts}
    table = with_soft_targets(prompt_table(train, generators), soft, generators)
    finetune = FinetuneSettings(
        seed=args.seed,
        num_threads=args.threads,
        ranking_weight=settings.ranking_weight,
        soft_pair_weight=settings.soft_pair_weight,
        num_frozen_layers=args.frozen_layers,
    )
    spec = EncoderSpec(num_frozen_layers=args.frozen_layers, max_tokens=args.word_pieces)
    bottom = FrozenBottom(spec, cache_dir=default_cache_dir(), allow_cuda=False)
    padded = bottom_states(bottom, table.texts, args.threads, print)
    with deterministic_torch(args.threads):
        model = fit_top(load_base_encoder(), finetune, padded, table, np.arange(len(table.texts)), print, "proxy")
        fitted_s = time.perf_counter() - started
        unique = list(dict.fromkeys(example.prompt_text for example in heldout))
        held_states = bottom_states(bottom, unique, args.threads, print)
        torch_scores = dict(zip(unique, score_rows(model, held_states, np.arange(len(unique)))))
        top_graph = export_top_graph(model)
    encoder = FinetunedEncoder(bottom, top_graph, num_threads=args.threads, allow_cuda=False)
    int8_scores = dict(zip(unique, encoder.embed(unique)))
    encoder.close()
    rows = rows_of_examples(np.zeros((len(heldout), 0), np.float32), heldout, [e.source for e in heldout])
    column = np.array([generators.index(example.source) for example in heldout])

    def own_column(scores: dict[str, np.ndarray]) -> np.ndarray:
        return np.array([scores[e.prompt_text][c] for e, c in zip(heldout, column)])

    return {
        "encoder_version": spec.version,
        "num_train_prompts": len(table.texts),
        "num_heldout_rows": len(heldout),
        "fit_seconds": round(fitted_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "torch": _taus(rows, own_column(torch_scores)),
        "int8": _taus(rows, own_column(int8_scores)),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    report = run(args)
    config = {key: value for key, value in vars(args).items() if key != "out"}
    write_report(args.out, build_report("predictor_encoder_proxy", config, report))  # + machine and commit
    print(json.dumps({key: report[key] for key in ("encoder_version", "fit_seconds", "total_seconds")}))
    print({split: value["kendall_tau"] for split, value in report["int8"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
