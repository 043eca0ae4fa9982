"""Command-line flags every service shares, so `python -m services.X` looks the same for all."""

from __future__ import annotations

import argparse

# Help texts of the server fields every service config declares (host, port, log_level, drain_s)
HOST_HELP = "interface to listen on"
PORT_HELP = "TCP port (0 = any free)"
LOG_LEVEL_HELP = "DEBUG, INFO, WARNING or ERROR"
DRAIN_HELP = "on SIGTERM, how long in-flight calls may finish before the server stops, seconds"


def add_server_flags(parser: argparse.ArgumentParser, *, default_port: int) -> None:
    """--host, --port (0 = the OS picks), --log-level, --drain-seconds."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"TCP port (default {default_port}; 0 = any free)"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=5.0,
        help="on SIGTERM, how long in-flight calls may finish before the server stops",
    )


def is_host_port(address: str) -> bool:
    """True for `host:port` (IPv6 as `[::1]:port`) with a numeric port in 1..65535."""
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) <= 65535)


def validate_port(port: int) -> int:
    """Raises ValueError unless 0 <= port <= 65535."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in [0, 65535], got {port}")
    return port
