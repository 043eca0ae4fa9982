"""`python -m services.predictor [flags]`: serve alise.v1.PredictorService until SIGINT/SIGTERM."""

from __future__ import annotations

import sys
from typing import Sequence

from services.common.cli_errors import print_error
from services.common.logging_setup import configure_logging
from services.common.server import serve_main
from services.predictor import app
from services.predictor.config import PredictorConfig


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = PredictorConfig.from_args(argv)
    except ValueError as error:
        print_error("python -m services.predictor", str(error))
        return 2
    configure_logging(config.log_level, "predictor")
    try:
        return serve_main("python -m services.predictor", lambda: app.start(config), grace_s=config.drain_s)
    except (FileNotFoundError, ValueError) as error:  # missing or incompatible model directory
        print_error("python -m services.predictor", str(error))
        return 2


if __name__ == "__main__":
    sys.exit(main())
