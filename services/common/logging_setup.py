"""One log format for every service, configured at the entry point (never at import)."""

from __future__ import annotations

import logging


def configure_logging(level: str, service: str) -> None:
    """Logs to stderr as `time level service logger: message`."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
