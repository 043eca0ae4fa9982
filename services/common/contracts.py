"""The generated protobuf/gRPC modules (alise/v1), checked against protos/ before they are imported.

Every service imports contracts from here (`from services.common.contracts import pb, rpc`), never
from another service: the .proto files are the only coupling between services. Nothing is generated
here: scripts/install.sh runs `python -m services.common.codegen`, and a missing or stale package
raises codegen.ContractsNotGenerated naming that command instead of a confusing ImportError or
a silent mismatch with the .proto files.
"""

from __future__ import annotations

from services.common import codegen

codegen.check()

# After the check, so that a missing or stale package fails with its fix, not an ImportError.
from alise.v1 import (  # noqa: E402
    common_pb2,
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    memory_service_pb2,
    memory_service_pb2_grpc,
    predictor_service_pb2,
    predictor_service_pb2_grpc,
)

__all__ = [
    "common_pb2",
    "engine_service_pb2",
    "engine_service_pb2_grpc",
    "gateway_service_pb2",
    "gateway_service_pb2_grpc",
    "memory_service_pb2",
    "memory_service_pb2_grpc",
    "predictor_service_pb2",
    "predictor_service_pb2_grpc",
]
