"""`python -m services.gateway --engine-address HOST:PORT [--predictor-address HOST:PORT] [flags]`."""

from __future__ import annotations

import asyncio
import sys

from services.common.cli_errors import print_error
from services.common.logging_setup import configure_logging
from services.common.server import PortBindError, run_until_signal
from services.gateway import app
from services.gateway.config import GatewayConfig

PROG = "python -m services.gateway"
EXIT_CANNOT_LISTEN = 1


async def _serve(config: GatewayConfig) -> None:
    handle = await app.start(config)
    await run_until_signal(handle, grace_s=config.drain_seconds)


def main(argv: list[str] | None = None) -> int:
    config = GatewayConfig.from_args(argv)
    configure_logging(config.log_level, "gateway")
    try:
        asyncio.run(_serve(config))
    except PortBindError as error:  # gRPC or HTTP port; one line, not a traceback: usually a port already in use
        print_error(PROG, str(error))
        return EXIT_CANNOT_LISTEN
    return 0


if __name__ == "__main__":
    sys.exit(main())
