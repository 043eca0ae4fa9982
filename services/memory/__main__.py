"""`python -m services.memory [flags]`: runs the memory service until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from services.common.logging_setup import configure_logging
from services.common.server import run_until_signal
from services.memory import app
from services.memory.config import MemoryConfig


async def _serve(config: MemoryConfig) -> None:
    handle = await app.start(config)
    await run_until_signal(handle, grace_s=config.drain_s)


def main(argv: list[str] | None = None) -> None:
    config = MemoryConfig.from_args(argv)
    configure_logging(config.log_level, "memory")
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main(sys.argv[1:])
