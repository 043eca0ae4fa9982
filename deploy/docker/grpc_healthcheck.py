#!/usr/bin/env python3
"""Container healthcheck: exits 0 when a gRPC server answers SERVING for a service (grpc.health.v1).

    alise-healthcheck HOST:PORT [SERVICE] [--timeout-s SECONDS]
                      [--tls-ca PEM [--tls-cert PEM --tls-key PEM] [--tls-server-name NAME]]

With --tls-ca the check speaks TLS (presenting --tls-cert/--tls-key to a server that requires
client certificates), so it works against services started with TLS flags.

Exit status 0: SERVING. 1: anything else (NOT_SERVING while draining, unknown service, refused,
timed out), with the reason on stderr, which `docker inspect` shows as the healthcheck output.
Standalone on purpose (grpcio and grpcio-health-checking only), so every image can run it the same
way; copied into the images as /usr/local/bin/alise-healthcheck.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_SERVING = 0
EXIT_UNHEALTHY = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alise-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of the server, e.g. 127.0.0.1:50052")
    parser.add_argument("service", nargs="?", default="", help="e.g. alise.v1.EngineService ('' = the whole server)")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="deadline of the check")
    parser.add_argument("--tls-ca", default="", help="CA bundle (PEM): check over TLS")
    parser.add_argument("--tls-cert", default="", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", default="", help="private key (PEM) of --tls-cert")
    parser.add_argument("--tls-server-name", default="", help="name to verify instead of HOST")
    args = parser.parse_args(argv)
    request = health_pb2.HealthCheckRequest(service=args.service)
    with _channel(args) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout_s)
        except grpc.RpcError as error:
            print(f"{args.address} {args.service!r}: {error.code().name}: {error.details()}", file=sys.stderr)
            return EXIT_UNHEALTHY
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{args.address} {args.service!r}: {status}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(f"{args.address} {args.service!r}: {status}")
    return EXIT_SERVING


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as pem_file:
        return pem_file.read()


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls_ca:
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(_read(args.tls_ca), _read(args.tls_key), _read(args.tls_cert))
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.address, credentials, options=options)


if __name__ == "__main__":
    sys.exit(main())
