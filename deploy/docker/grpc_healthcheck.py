#!/usr/bin/env python3
"""Container healthcheck: exits 0 when a gRPC server answers SERVING for a service (grpc.health.v1).

    alise-healthcheck HOST:PORT [SERVICE] [--timeout-s SECONDS]

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
    args = parser.parse_args(argv)
    request = health_pb2.HealthCheckRequest(service=args.service)
    with grpc.insecure_channel(args.address) as channel:
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


if __name__ == "__main__":
    sys.exit(main())
