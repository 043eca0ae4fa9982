"""`python -m services.gateway --engine-address HOST:PORT [--predictor-address HOST:PORT] [flags]`."""

from __future__ import annotations

import asyncio
import sys

from services.common.logging_setup import configure_logging
from services.common.server import run_until_signal
from services.gateway import app
from services.gateway.config import GatewayConfig


async def _serve(config: GatewayConfig) -> None:
    handle = await app.start(config)
    await run_until_signal(handle, grace_s=config.drain_seconds)


def main(argv: list[str] | None = None) -> int:
    config = GatewayConfig.from_args(argv)
    configure_logging(config.log_level, "gateway")
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
