"""`python -m services.engine [flags]`: one engine replica (see --help)."""

from __future__ import annotations

import asyncio
import sys

from services.common.cli_errors import print_error
from services.common.logging_setup import configure_logging
from services.common.server import run_until_signal
from services.engine.app import start
from services.engine.config import EngineConfig


async def _main(config: EngineConfig) -> None:
    handle = await start(config)
    await run_until_signal(handle, grace_s=config.drain_s)


def main(argv: list[str] | None = None) -> int:
    try:
        config = EngineConfig.from_args(argv)
    except ValueError as error:
        print_error("python -m services.engine", str(error))
        return 2
    configure_logging(config.log_level, "engine")
    asyncio.run(_main(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
