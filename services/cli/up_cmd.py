"""`alise up`: flags -> UpConfig -> plan -> launcher."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import socket
import tempfile
import time

from services.cli.launcher import LaunchSettings, run_stack
from services.cli.restart_policy import RestartSettings
from services.cli.stack_plan import ServiceName, UpConfig, build_stack_plan, serves_tls
from services.common import arg_types
from services.common.cli_errors import print_error
from services.common.config_flags import add_config_flags, config_values
from services.common.model_catalog import DEFAULT_MODEL, DUMMY_TINY_MODEL

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers `up` and its flags."""
    parser = subparsers.add_parser(
        "up",
        help="start memory, predictor, engine and gateway locally until Ctrl-C",
        description="Starts the four services as child processes on loopback, dependencies first, "
        "waits until each reports SERVING, prints the gateway address and stays up until Ctrl-C or "
        "SIGTERM. A child that dies is restarted on its port after a backoff while the others keep serving; "
        "only more than --max-restarts deaths of one child within --restart-window-s stop the stack (status 1).",
    )
    parser.add_argument("--gateway-port", type=arg_types.port, default=50051, help="default 50051; 0 = any")
    parser.add_argument("--gateway-host", default="127.0.0.1", help="gateway interface (0.0.0.0 to expose it)")
    parser.add_argument(
        "--gateway-http-port",
        type=arg_types.port,
        default=8000,
        help="OpenAI-compatible HTTP; default 8000; 0 = a free one, chosen at start and kept across gateway restarts",
    )
    parser.add_argument("--engine-port", type=arg_types.port, default=50052, help="default 50052; 0 = any free port")
    for service in ("predictor", "memory"):
        parser.add_argument(f"--{service}-port", type=arg_types.port, default=0, help="default 0 = any free port")
    add_config_flags(parser, RestartSettings)  # --max-restarts, --restart-window-s
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model the engine loads (default {DEFAULT_MODEL}; {DUMMY_TINY_MODEL} for random weights; "
        "dummy:<preset|dir>; or a local Hugging Face directory)",
    )
    parser.add_argument("--no-predictor", action="store_true", help="run without the predictor service")
    parser.add_argument(
        "--no-memory-service",
        action="store_true",
        help="run without the KV memory service: preempted requests are recomputed, never swapped",
    )
    parser.add_argument("--log-dir", type=pathlib.Path, help="children's logs (default: a new temp dir)")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO", help="children's log level")
    parser.add_argument("--drain-seconds", type=arg_types.non_negative_float, default=5.0, help="children's drain")
    parser.add_argument(
        "--stop-grace-s",
        type=arg_types.non_negative_float,
        default=10.0,
        help="after the drain, wait this before SIGKILL",
    )
    parser.add_argument(
        "--startup-timeout-s", type=arg_types.positive_float, default=600.0, help="per service, until SERVING"
    )
    for service in ServiceName:
        parser.add_argument(
            f"--{service.value}-arg",
            action="append",
            default=[],
            metavar="FLAG",
            help=f"extra flag for the {service.value} (repeatable; use --{service.value}-arg=--flag=value)",
        )
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> UpConfig:
    """Builds (and so validates) the UpConfig; raises ValueError with a clear message."""
    extra = tuple(
        (service.value, tuple(getattr(args, f"{service.value}_arg")))
        for service in ServiceName
        if getattr(args, f"{service.value}_arg")
    )
    return UpConfig(
        gateway_host=args.gateway_host,
        gateway_port=args.gateway_port,
        gateway_http_port=args.gateway_http_port,
        engine_port=args.engine_port,
        predictor_port=args.predictor_port,
        memory_port=args.memory_port,
        model=args.model,
        with_predictor=not args.no_predictor,
        with_memory=not args.no_memory_service,
        log_level=args.log_level,
        drain_s=args.drain_seconds,
        stop_grace_s=args.stop_grace_s,
        startup_timeout_s=args.startup_timeout_s,
        extra_args=extra,
    )


def run(args: argparse.Namespace) -> int:
    """Runs `alise up`; returns the exit status."""
    started_at_s = getattr(args, "started_at_s", time.monotonic())
    try:
        config = config_from_args(args)
    except ValueError as error:
        print_error("alise up", str(error))
        return 2
    log_dir = args.log_dir or pathlib.Path(tempfile.mkdtemp(prefix="alise-up-"))
    try:
        restarts = RestartSettings(**config_values(RestartSettings, args))
    except ValueError as error:
        print_error("alise up", str(error))
        return 2
    config = with_gateway_http_port_chosen(config)
    http_host = "127.0.0.1" if config.gateway_host in ("0.0.0.0", "::", "[::]") else config.gateway_host
    settings = LaunchSettings(
        restarts=restarts,
        gateway_http_url=_gateway_http_url(config, http_host),
        log_dir=log_dir,
        startup_timeout_s=config.startup_timeout_s,
        stop_timeout_s=config.drain_s + config.stop_grace_s,
        started_at_s=started_at_s,
    )
    return asyncio.run(run_stack(build_stack_plan(config), settings))


def with_gateway_http_port_chosen(config: UpConfig) -> UpConfig:
    """--gateway-http-port 0: a free port chosen here, once, instead of by the gateway at each start.

    A dead child is restarted on the gRPC port it announced (READY line); the HTTP port is not
    announced, so a gateway restarted with --http-port 0 would serve HTTP somewhere new and its
    clients would lose it. (Another process may take the port before the gateway binds it; the
    gateway then fails to start with a clear error.)
    """
    if config.gateway_http_port != 0:
        return config
    host = config.gateway_host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    return dataclasses.replace(config, gateway_http_port=port)


def _gateway_http_url(config: UpConfig, host: str) -> str:
    """The OpenAI base URL to print: https when the gateway got a TLS certificate; "" for no HTTP port."""
    if not config.gateway_http_port:
        return ""
    scheme = "https" if serves_tls(config.extra_for(ServiceName.GATEWAY)) else "http"
    return f"{scheme}://{host}:{config.gateway_http_port}"
