"""`python -m services.memory [flags]`: runs the memory service until SIGINT/SIGTERM."""

from __future__ import annotations

import sys

from services.common.logging_setup import configure_logging
from services.common.server import serve_main
from services.memory import app
from services.memory.config import MemoryConfig


def main(argv: list[str] | None = None) -> int:
    config = MemoryConfig.from_args(argv)
    configure_logging(config.log_level, "memory")
    return serve_main("python -m services.memory", lambda: app.start(config), grace_s=config.drain_s)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
