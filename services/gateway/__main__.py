"""`python -m services.gateway --engine-address HOST:PORT [--predictor-address HOST:PORT] [flags]`."""

from __future__ import annotations

import asyncio
import sys

from services.common.cli_errors import print_error
from services.common.logging_setup import configure_logging
from services.common.server import run_until_signal
from services.gateway import app
from services.gateway.config import GatewayConfig
from services.gateway.http.server import PortBindError

PROG = "python -m services.gateway"
EXIT_CANNOT_LISTEN = 1


async def _serve(config: GatewayConfig) -> None:
    handle = await app.start(config)
    await run_until_signal(handle, grace_s=config.drain_seconds)


def _grpc_bind_error(config: GatewayConfig, error: Exception) -> PortBindError | None:
    """grpc's bind failure (RuntimeError "Failed to bind ...", or the server helper's OSError) as a PortBindError."""
    text = str(error)
    if "Failed to bind" not in text and "could not bind" not in text:
        return None
    return PortBindError("gRPC", config.host, config.port, "--port", "address in use or not available")


def main(argv: list[str] | None = None) -> int:
    config = GatewayConfig.from_args(argv)
    configure_logging(config.log_level, "gateway")
    try:
        asyncio.run(_serve(config))
    except PortBindError as error:  # one line, not a traceback: the usual cause is a port already in use
        print_error(PROG, str(error))
        return EXIT_CANNOT_LISTEN
    except (RuntimeError, OSError) as error:
        bind_error = _grpc_bind_error(config, error)
        if bind_error is None:
            raise
        print_error(PROG, str(bind_error))
        return EXIT_CANNOT_LISTEN
    return 0


if __name__ == "__main__":
    sys.exit(main())
