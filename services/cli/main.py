"""Entry point of the `alise` command (console script `alise = services.cli.main:main`).

    alise up                 start the local stack until Ctrl-C
    alise generate "prompt"  stream one completion
    alise bench KIND         benchmarks: stack, scheduler, sim, serve, ... (alise bench --help)
    alise predictor ...      the predictor's own commands (training, evaluation), forwarded as is
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from typing import Sequence

EXIT_USAGE = 2


def _version() -> str:
    try:
        return importlib.metadata.version("alise")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The full parser; subcommand modules add their own flags and a `handler`."""
    from services.cli import bench_cmd, collect_lengths, generate_cmd, up_cmd

    parser = argparse.ArgumentParser(prog="alise", description="alise: LLM serving with speculative scheduling")
    parser.add_argument("--version", action="version", version=f"alise {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up_cmd.add_parser(subparsers)
    generate_cmd.add_parser(subparsers)
    bench_cmd.add_parser(subparsers)
    collect_lengths.add_parser(subparsers)
    subparsers.add_parser(
        "predictor", help="predictor commands (train, evaluate, ...): alise predictor --help", add_help=False
    )
    return parser


def run_predictor_cli(argv: Sequence[str]) -> int:
    """Forwards argv untouched to services.cli.predictor_cmd.main (imported only when asked for)."""
    try:
        from services.cli import predictor_cmd
    except ImportError as error:
        print(f"alise predictor: error: the predictor CLI is unavailable ({error})", file=sys.stderr)
        return EXIT_USAGE
    status = predictor_cmd.main(list(argv))
    return int(status or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Parses argv (default sys.argv[1:]) and runs the subcommand; returns the exit status."""
    started_at_s = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predictor":  # forwarded before argparse sees (and rejects) its flags
        return run_predictor_cli(argv[1:])
    args = build_parser().parse_args(argv)
    args.started_at_s = started_at_s
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
