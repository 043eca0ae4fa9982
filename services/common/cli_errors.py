"""One error style for every command line: `<prog>: error: <message>` on stderr.

It is argparse's own style for usage errors (`alise generate: error: argument --top-p: ...`), so a
bad flag, a bad value found later and a failed call all read the same way, and stdout carries only
results (a pipe or a JSON reader never sees an error line). prog is the command as typed:
`alise up`, `alise bench kv-codec`, `python -m services.engine`.
"""

from __future__ import annotations

import sys


def print_error(prog: str, message: str) -> None:
    """Prints `<prog>: error: <message>` to stderr."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
