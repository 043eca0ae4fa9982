"""Subcommands whose modules are imported only when they run, so that `alise --help` stays fast.

A command module (its flags and its handler) may import torch, FastAPI or the simulator at its top.
The parent parser lists every command from its name and one-line help alone, and builds the full
parser only of the command that argv names; the others stay placeholders, which argparse lists in
--help but never parses (it parses only the chosen subcommand):

    alise --help           every command a placeholder: no command module imported
    alise generate ...     services.cli.generate_cmd imported; up, bench, ... placeholders
    alise bench sim ...    services.cli.bench_cmd, then only services.bench.sim.cli among the kinds

tests/test_cli_lazy.py checks that each module registers the name and help line listed for it.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class LazyCommand:
    """One subcommand of a parent parser, known without importing its module."""

    module: str  # dotted name of a module whose add_parser(subparsers) registers the command
    help: str  # its line in the parent's --help: the same text the module registers
    nested: bool = False  # add_parser(subparsers, argv) takes the words after the command, to stay lazy too


def selected_command(argv: Sequence[str]) -> str | None:
    """The first word of argv that is not an option: the subcommand argparse will choose (the
    parent parsers here have no option that takes a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def add_commands(
    subparsers: argparse._SubParsersAction, commands: Mapping[str, LazyCommand], argv: Sequence[str] | None
) -> None:
    """Registers every command in order: in full the one argv selects (every one when argv is None),
    as a help-only placeholder the others."""
    selected = None if argv is None else selected_command(argv)
    for name, command in commands.items():
        if argv is not None and name != selected:
            subparsers.add_parser(name, help=command.help, add_help=False)
            continue
        module = importlib.import_module(command.module)
        if not command.nested:
            module.add_parser(subparsers)
            continue
        rest = None if argv is None else list(argv)[list(argv).index(name) + 1 :]
        module.add_parser(subparsers, rest)
