"""`python -m services.predictor [flags]`: serve alise.v1.PredictorService until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import sys
from typing import Sequence

from services.common.cli_errors import print_error
from services.common.logging_setup import configure_logging
from services.common.server import run_until_signal
from services.predictor import app
from services.predictor.config import PredictorConfig


async def _serve(config: PredictorConfig) -> None:
    handle = await app.start(config)
    await run_until_signal(handle, grace_s=config.drain_s)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = PredictorConfig.from_args(argv)
    except ValueError as error:
        print_error("python -m services.predictor", str(error))
        return 2
    configure_logging(config.log_level, "predictor")
    try:
        asyncio.run(_serve(config))
    except (FileNotFoundError, ValueError) as error:  # missing or incompatible model directory
        print_error("python -m services.predictor", str(error))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
