"""`python -m services.gateway --engine-address HOST:PORT [--predictor-address HOST:PORT] [flags]`."""

from __future__ import annotations

import sys

from services.common.logging_setup import configure_logging
from services.common.server import serve_main
from services.gateway import app
from services.gateway.config import GatewayConfig


def main(argv: list[str] | None = None) -> int:
    config = GatewayConfig.from_args(argv)
    configure_logging(config.log_level, "gateway")
    return serve_main(
        "python -m services.gateway", lambda: app.start(config, freeze_heap=True), grace_s=config.drain_seconds
    )


if __name__ == "__main__":
    sys.exit(main())
