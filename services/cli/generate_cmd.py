"""`alise generate "prompt"`: stream one completion from a gateway to stdout.

Text deltas go to stdout as they arrive (flushed per message), so the command pipes like `cat`;
the one-line summary goes to stderr so it never mixes into the text. It calls the gateway through
services.client (API key, TLS, retries only on UNAVAILABLE before any token); a failed call prints
`alise generate: error: <STATUS>: <message>` (services/common/cli_errors.py) and exits 1.

This module holds the flags only; the client work is in generate_client.py, imported when the
command runs, so that `alise generate --help` starts without importing grpc and protobuf.
"""

from __future__ import annotations

import argparse

from services.common import arg_types


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers `generate` and its flags."""
    parser = subparsers.add_parser("generate", help="stream one completion from a running gateway")
    parser.add_argument("prompt", help='prompt text; "-" reads it from stdin')
    parser.add_argument("--address", type=arg_types.address, default="127.0.0.1:50051", help="gateway host:port")
    parser.add_argument("--max-tokens", type=arg_types.positive_int, help="upper bound on generated tokens")
    parser.add_argument(
        "--temperature",
        type=arg_types.non_negative_float,
        default=0.0,
        help="0 = greedy (the default here: a 135M model sampled at 1.0 rambles; the API's default is 1.0)",
    )
    parser.add_argument("--top-p", type=arg_types.probability_mass, help="nucleus mass in (0, 1]")
    parser.add_argument("--top-k", type=arg_types.non_negative_int, default=0, help="0 disables")
    parser.add_argument("--seed", type=arg_types.seed, help="seed of the request's random generator")
    parser.add_argument(
        "--stop", action="append", default=[], metavar="S", help="stop string, not returned (repeatable)"
    )
    parser.add_argument("--ignore-eos", action="store_true", help="generate past EOS until --max-tokens")
    parser.add_argument("--timeout-s", type=arg_types.positive_float, default=600.0, help="gRPC deadline")
    parser.add_argument("--request-id", default="", help="client request id (default: generated)")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt as plain text (default: as a user chat message when the model has a chat template)",
    )
    parser.add_argument("--system", default="", help="system message of the chat (default: the template's own)")
    parser.add_argument("--api-key", default="", help="API key of the gateway (sent as 'authorization: Bearer')")
    parser.add_argument("--tls-ca", default="", help="connect with TLS, verifying the gateway with this CA (PEM)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Runs `alise generate`; returns the exit status."""
    from services.cli import generate_client  # here, not at the top: --help needs no grpc (see above)

    return generate_client.run(args)
