"""`python -m services.engine [flags]`: one engine replica (see --help)."""

from __future__ import annotations

import sys

from services.common.cli_errors import print_error
from services.common.logging_setup import configure_logging
from services.common.server import serve_main
from services.engine.app import start
from services.engine.config import EngineConfig


def main(argv: list[str] | None = None) -> int:
    try:
        config = EngineConfig.from_args(argv)
    except ValueError as error:
        print_error("python -m services.engine", str(error))
        return 2
    configure_logging(config.log_level, "engine")
    return serve_main("python -m services.engine", lambda: start(config), grace_s=config.drain_s)


if __name__ == "__main__":
    sys.exit(main())
