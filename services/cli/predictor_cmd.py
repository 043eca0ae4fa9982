"""`alise predictor ...`: the predictor's offline commands and its two benchmarks under one parser.

    train             services/predictor/cli.py    (also `python -m services.predictor.cli train`)
    export-embedding  services/predictor/cli.py    (the install step; also under that module)
    eval              services/bench/predictor_eval.py
    bench             services/bench/predictor_bench.py
    ceiling           services/bench/predictor_ceiling.py
    feedback-lengths  services/cli/feedback_lengths_cmd.py (feedback files without prompt texts, and back)

The predictor package cannot import services.bench (tests/test_import_boundaries.py), so the
command that joins both lives here. Flags, outputs and exit statuses are those of each module.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from services.bench import predictor_bench, predictor_ceiling, predictor_eval
from services.cli import feedback_lengths_cmd
from services.common.cache_dir import default_cache_dir
from services.predictor import cli as predictor_cli

MEASURING_COMMANDS = ("eval", "bench", "ceiling")  # these read the embedding cache, so they need its directory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alise predictor", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    predictor_cli.add_train_parser(commands)
    predictor_eval.add_parser(commands)
    predictor_bench.add_parser(commands)
    predictor_ceiling.add_parser(commands)
    predictor_cli.add_export_parser(commands)
    feedback_lengths_cmd.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `alise predictor`; returns the process exit status."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    if args.command in MEASURING_COMMANDS and args.cache_dir is None:
        args.cache_dir = default_cache_dir()
    return predictor_cli.run_command(args)
