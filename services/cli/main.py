"""Entry point of the `alise` command (console script `alise = services.cli.main:main`).

alise up                 start the local stack until Ctrl-C
alise generate "prompt"  stream one completion
alise bench KIND         benchmarks: stack, scheduler, sim, serve, ... (alise bench --help)
alise predictor ...      the predictor's own commands (training, evaluation), forwarded as is
alise spec ...           speculative decoding's offline commands (train-exit-heads)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from services.cli.lazy_commands import LazyCommand, add_commands
from services.common.cli_errors import print_error

EXIT_USAGE = 2
COMMANDS = {  # in --help order; each module is imported only when its command runs (lazy_commands.py)
    "up": LazyCommand("services.cli.up_cmd", "start memory, predictor, engine and gateway locally until Ctrl-C"),
    "generate": LazyCommand("services.cli.generate_cmd", "stream one completion from a running gateway"),
    "bench": LazyCommand(
        "services.cli.bench_cmd", "benchmarks (stack, http, scheduler, sim, serve, replicas, attention)", nested=True
    ),
    "collect-lengths": LazyCommand("services.cli.collect_lengths", "answer dataset prompts through a stack (feedback)"),
    "spec": LazyCommand("services.cli.spec_cmd", "speculative decoding: train the early-exit heads"),
}
PREDICTOR_HELP = "predictor commands (train, evaluate, ...): alise predictor --help"


class _VersionAction(argparse.Action):
    """--version: reads the installed version only when asked (importlib.metadata scans sys.path)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version and exit")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        import importlib.metadata

        try:
            version = importlib.metadata.version("alise")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        print(f"alise {version}")
        parser.exit()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for argv: in full only the command argv names (every command when argv is None);
    subcommand modules add their own flags and a `handler`."""
    parser = argparse.ArgumentParser(prog="alise", description="alise: LLM serving with speculative scheduling")
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(subparsers, COMMANDS, argv)
    subparsers.add_parser("predictor", help=PREDICTOR_HELP, add_help=False)
    return parser


def run_predictor_cli(argv: Sequence[str]) -> int:
    """Forwards argv untouched to services.cli.predictor_cmd.main (imported only when asked for)."""
    try:
        from services.cli import predictor_cmd
    except ImportError as error:
        print_error("alise predictor", f"the predictor CLI is unavailable ({error})")
        return EXIT_USAGE
    status = predictor_cmd.main(list(argv))
    return int(status or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Parses argv (default sys.argv[1:]) and runs the subcommand; returns the exit status."""
    started_at_s = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "predictor":  # forwarded before argparse sees (and rejects) its flags
        return run_predictor_cli(argv[1:])
    args = build_parser(argv).parse_args(argv)
    args.started_at_s = started_at_s
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
