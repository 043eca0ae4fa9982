"""A busy port stops `python -m services.gateway` with one clear line (address and flag), not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)
PROG = "python -m services.gateway"


def _run_gateway(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.gateway", "--engine-address", "127.0.0.1:1", "--log-level", "ERROR", *flags],
        capture_output=True,
        text=True,
        timeout=50,
    )


@pytest.mark.parametrize(
    ("flag", "what", "other_flags"), [("--http-port", "HTTP", ("--port", "0")), ("--port", "gRPC", ())]
)
def test_a_busy_port_is_one_line_naming_the_port_and_the_flag(flag, what, other_flags):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run_gateway(*other_flags, flag, str(port))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{PROG}: error:")]
    assert errors == [
        f"{PROG}: error: cannot listen for {what} on 127.0.0.1:{port} ("
        f"{'Address already in use' if what == 'HTTP' else 'address in use or not available'}); "
        f"choose another port with {flag}"
    ]
