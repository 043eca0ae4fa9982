"""Where alise keeps what it builds once per machine (ONNX graphs, converted models)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "ALISE_CACHE_DIR"


def default_cache_dir() -> Path:
    """$ALISE_CACHE_DIR, else $XDG_CACHE_HOME/alise, else ~/.cache/alise (read when called)."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alise"
