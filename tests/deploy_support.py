"""Helpers for the deploy/ checks: file locations, compose interpolation, durations, and parsing a
container's command line with the service's own flag parser (so a typo in a compose command or a
Kubernetes `args` fails here, not on a cluster)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
DOCKER_DIR = DEPLOY_DIR / "docker"
K8S_DIR = DEPLOY_DIR / "k8s"
COMPOSE_SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "compose-spec.json"

# Service -> (gRPC service name its health reports, default port).
SERVICES = {
    "memory": ("alise.v1.MemoryService", 50054),
    "predictor": ("alise.v1.PredictorService", 50053),
    "engine": ("alise.v1.EngineService", 50052),
    "gateway": ("alise.v1.GatewayService", 50051),
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")
_STAGE = re.compile(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def interpolate(value: str) -> str:
    """Compose-style `${VAR:-default}` with the defaults (what runs when no variable is set)."""

    def replace(match: re.Match[str]) -> str:
        if match.group("default") is None:
            raise AssertionError(f"{match.group(0)} has no default: `docker compose up` would need it set")
        return match.group("default")

    return _VARIABLE.sub(replace, value)


def duration_s(text: str) -> float:
    """A compose duration ("45s", "1m30s", "500ms") in seconds."""
    parts = _DURATION_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * _SECONDS_PER_UNIT[unit] for number, unit in parts)


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value after `flag` in argv (None when absent)."""
    argv = list(argv)
    return argv[argv.index(flag) + 1] if flag in argv else None


def parse_service_args(service: str, argv: Sequence[str]) -> Any:
    """The service's config built from argv by its own parser; fails the test on bad flags."""
    if service == "gateway":
        from services.gateway.config import GatewayConfig as config_class
    elif service == "engine":
        from services.engine.config import EngineConfig as config_class
    elif service == "predictor":
        from services.predictor.config import PredictorConfig as config_class
    else:
        from services.memory.config import MemoryConfig as config_class
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return config_class.from_args(list(argv))
        except SystemExit:
            pytest.fail(f"{service} rejects {list(argv)}: {stderr.getvalue().strip()}")


def dockerfile_stages(path: Path) -> set[str]:
    """Names of the build stages (`FROM ... AS name`) of a Dockerfile."""
    return set(_STAGE.findall(path.read_text()))
